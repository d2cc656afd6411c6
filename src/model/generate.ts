/**
 * The generation loop over one Sequence: prefill what is pending, then pick / feed / stream one
 * token at a time until EOS, the token budget, the context end, a loop, or cancellation.
 *
 * Cancellation is cooperative: `shouldStop()` / `signal` are checked between decoder runs, never
 * inside one (terminating a thread inside ORT's run() aborts the process). Each run is awaited,
 * so a worker's message port gets to deliver a cancel flag between steps.
 */
import { GenerationError } from './errors';
import type { ModelRunner } from './runner';
import { DEFAULT_REPETITION_GUARD, isLooping, RepetitionGuard, Rng, sampleToken, SamplingParams } from './sampling';
import type { Sequence } from './sequence';
import type { TextTokenizer } from './tokenizer';

export type FinishReason = 'eos' | 'length' | 'context' | 'repetition' | 'cancelled';

export interface TokenEvent {
  /** Newly stable text (may be empty while a multi-byte character is incomplete). */
  text: string;
  tokenId: number;
  /** 0-based index of the token in this generation. */
  index: number;
}

/**
 * What the generation loop needs from a runner. A scheduler may pass a wrapper instead of the
 * ModelRunner itself, e.g. one that coalesces concurrent `decodeStep([seq])` calls of several
 * in-flight generations into one batched step (continuous batching, src/inference/batcher.ts).
 */
export type DecodeRunner = Pick<ModelRunner, 'prefill' | 'decodeStep' | 'maxPositions'>;

export interface GenerateOptions {
  maxNewTokens: number;
  sampling: SamplingParams;
  /** PRNG for sampling; required when temperature > 0 (the task layer makes it from a seed). */
  rng?: Rng | null;
  /** `false` disables the loop guard (parity tests); default DEFAULT_REPETITION_GUARD. */
  repetitionGuard?: RepetitionGuard | false;
  onToken?: (ev: TokenEvent) => void;
  shouldStop?: () => boolean;
  signal?: AbortSignal;
}

export interface GenerationTimings {
  /** Decoder pass over the pending prompt (text + image embeddings). */
  prefillMs: number;
  /** From the call to the first generated token being known. */
  firstTokenMs: number;
  /** Decode steps after the prefill. */
  decodeMs: number;
  totalMs: number;
  /** Generated tokens per second of decode time (first token excluded: it comes from the prefill). */
  tokensPerSecond: number;
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  /** Decoder positions processed by the prefill of this call. */
  prefillPositions: number;
  timings: GenerationTimings;
}

const now = () => performance.now();

/**
 * Generates from `seq`. On return the generated tokens are part of `seq.tokens`; the last one is
 * left pending (it would cost a decoder run to feed it and nobody may continue), so a later
 * continuation feeds it together with its own new tokens. EOS, when produced, is kept in the
 * sequence: it closes the turn, as `sep2` does in the template.
 */
export async function generate(runner: DecodeRunner, tok: TextTokenizer, seq: Sequence, opts: GenerateOptions): Promise<GenerationResult> {
  const t0 = now();
  const cancelled = () => (opts.shouldStop?.() ?? false) || (opts.signal?.aborted ?? false);
  const guard = opts.repetitionGuard === false ? null : (opts.repetitionGuard ?? DEFAULT_REPETITION_GUARD);
  if (opts.sampling.temperature > 0 && !opts.rng) {
    throw new GenerationError('bad_request', 'sampling with temperature > 0 needs an rng');
  }
  const stream = tok.streamDecoder();
  const generated: number[] = [];
  let finish: FinishReason | null = null;

  const prefillPositions = seq.pendingPositions;
  let prefillMs = 0;
  let logits: Float32Array | null = null;
  if (cancelled()) finish = 'cancelled';
  else {
    const tp = now();
    logits = await runner.prefill(seq);
    prefillMs = now() - tp;
  }
  let firstTokenMs = 0;
  const tDecode = now();

  while (!finish && logits) {
    if (cancelled()) {
      finish = 'cancelled';
      break;
    }
    const id = sampleToken(logits, opts.sampling, opts.rng ?? null, generated);
    if (generated.length === 0) firstTokenMs = now() - t0;
    if (id === tok.eosId) {
      seq.appendTokens([id]);
      finish = 'eos';
      break;
    }
    generated.push(id);
    seq.appendTokens([id]);
    const text = stream.push(id);
    opts.onToken?.({ text, tokenId: id, index: generated.length - 1 });

    if (generated.length >= opts.maxNewTokens) finish = 'length';
    else if (guard && isLooping(generated, guard)) finish = 'repetition';
    else if (seq.totalPositions >= runner.maxPositions) finish = 'context';
    else if (cancelled()) finish = 'cancelled';
    else logits = (await runner.decodeStep([seq]))[0];
  }
  const tail = stream.flush();
  if (tail) opts.onToken?.({ text: tail, tokenId: -1, index: generated.length });

  const end = now();
  const decodeMs = end - tDecode;
  return {
    text: stream.text,
    tokenIds: generated,
    finishReason: finish ?? 'cancelled',
    prefillPositions,
    timings: {
      prefillMs,
      firstTokenMs,
      decodeMs,
      totalMs: end - t0,
      tokensPerSecond: generated.length > 1 && decodeMs > 0 ? ((generated.length - 1) * 1000) / decodeMs : 0,
    },
  };
}
