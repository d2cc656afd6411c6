/**
 * The four tasks on top of the generation loop: describe, ask, quiz (self-questioning) and chat
 * (continuing a conversation's Sequence). Each builds or extends one Sequence, so a follow-up
 * reuses the KV cache of everything before it; the image is encoded once per conversation.
 */
import { GenerationError } from './errors';
import { FinishReason, generate, GenerationTimings, TokenEvent } from './generate';
import type { GenerationSpec, GenerationTask, Manifest } from './manifest';
import { IMAGE_PLACEHOLDER, openingPrompt, sqAnswerTurn, TemplateName, userTurn, vuserTurn } from './prompt';
import type { ModelRunner } from './runner';
import { randomSeed, RepetitionGuard, Rng, SamplingParams } from './sampling';
import { ImageEmbedding, Sequence } from './sequence';
import type { TextTokenizer } from './tokenizer';

/** The runner surface the tasks use (a ModelRunner, or a batching wrapper around one). */
export type TaskRunner = Pick<ModelRunner, 'prefill' | 'decodeStep' | 'maxPositions' | 'hidden' | 'layers'>;

export interface TaskContext {
  manifest: Manifest;
  runner: TaskRunner;
  tokenizer: TextTokenizer;
  repetitionGuard: RepetitionGuard | false;
}

/** Per-request overrides of the bundle's generation defaults, plus streaming and cancellation. */
export interface RunOptions {
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  /** Seed of the sampler (sampled tasks); reported back so a result can be replayed. */
  seed?: number;
  repetitionGuard?: RepetitionGuard | false;
  onToken?: (ev: TokenEvent) => void;
  shouldStop?: () => boolean;
  signal?: AbortSignal;
}

export interface TaskTimings extends GenerationTimings {
  /** Vision graph time for this request (0 when a cached embedding was passed). */
  imageEncodeMs: number;
}

export interface TaskResult {
  text: string;
  finishReason: FinishReason;
  /** The conversation, ready for `chat` follow-ups. */
  sequence: Sequence;
  tokens: { prompt: number; generated: number; total: number };
  timings: TaskTimings;
  /** The sampler seed when the task sampled. */
  seed?: number;
}

export interface QuizRound {
  question: string;
  answer: string;
  questionFinish: FinishReason;
  answerFinish: FinishReason;
}

export interface QuizEvent extends TokenEvent {
  part: 'description' | 'question' | 'answer';
  /** Round index (0-based); -1 for the description. */
  round: number;
}

export interface QuizOptions extends Omit<RunOptions, 'onToken'> {
  rounds: number;
  /** (`maxNewTokens` caps every part: description, each question, each answer.) */
  onToken?: (ev: QuizEvent) => void;
}

export interface QuizResult {
  description: string;
  descriptionFinish: FinishReason;
  rounds: QuizRound[];
  sequence: Sequence;
  seed: number;
  /** `cancelled` or `context` when the quiz stopped early (fewer rounds than asked), else `eos`. */
  finishReason: FinishReason;
  tokens: { prompt: number; generated: number; total: number };
  timings: { imageEncodeMs: number; totalMs: number; prefillMs: number; decodeMs: number; tokensPerSecond: number };
}

/** Removes the tokenizer's special-token strings from user text so nobody can write `</s>` turns. */
export function sanitizeUserText(text: string): string {
  return text.replace(/<\/?s>|<unk>/g, '').trim();
}

function samplingFor(spec: GenerationSpec, o: Omit<RunOptions, 'onToken'>): SamplingParams {
  return {
    temperature: o.temperature ?? spec.temperature,
    topK: o.topK ?? spec.top_k,
    topP: o.topP ?? spec.top_p,
    repetitionPenalty: o.repetitionPenalty ?? spec.repetition_penalty,
  };
}

/** Closes the previous turn with EOS (sep2) when generation stopped without one. */
export function closeTurn(ctx: TaskContext, seq: Sequence): void {
  if (seq.tokens.length && seq.lastToken !== ctx.tokenizer.eosId) seq.appendTokens([ctx.tokenizer.eosId]);
}

/**
 * A new Sequence holding the opening prompt `{system} USER: <image>\n{question} ASSISTANT:`.
 * The text around the image is tokenised separately (BOS on the first chunk only); the user's
 * question is never split on `<image>`, so a literal `<image>` in it stays text.
 */
export function openSequence(ctx: TaskContext, template: TemplateName, image: ImageEmbedding, question: string): Sequence {
  const t = ctx.manifest.templates[template];
  const q = sanitizeUserText(question);
  if (!q) throw new GenerationError('bad_request', 'The question is empty.');
  const full = openingPrompt(t, q, IMAGE_PLACEHOLDER);
  const at = full.indexOf(IMAGE_PLACEHOLDER);
  const before = full.slice(0, at);
  const after = full.slice(at + IMAGE_PLACEHOLDER.length);
  const tok = ctx.tokenizer;
  if (image.hidden !== ctx.runner.hidden) {
    throw new GenerationError('bad_request', `image embedding width ${image.hidden} does not match the decoder (${ctx.runner.hidden})`);
  }
  const seq = new Sequence(template, ctx.runner.layers, image);
  seq.append([
    { kind: 'text', ids: tok.encode(before, { bos: true }) },
    { kind: 'image' },
    { kind: 'text', ids: tok.encode(after) },
  ]);
  return seq;
}

async function run(
  ctx: TaskContext,
  task: GenerationTask,
  seq: Sequence,
  o: RunOptions,
  imageEncodeMs: number,
): Promise<TaskResult> {
  const spec = ctx.manifest.generation[task];
  const sampling = samplingFor(spec, o);
  const sampled = sampling.temperature > 0;
  const seed = sampled ? (o.seed ?? randomSeed()) : undefined;
  const res = await generate(ctx.runner, ctx.tokenizer, seq, {
    maxNewTokens: o.maxNewTokens ?? spec.max_new_tokens,
    sampling,
    rng: seed !== undefined ? new Rng(seed) : null,
    repetitionGuard: o.repetitionGuard ?? ctx.repetitionGuard,
    onToken: o.onToken,
    shouldStop: o.shouldStop,
    signal: o.signal,
  });
  return {
    text: res.text,
    finishReason: res.finishReason,
    sequence: seq,
    tokens: { prompt: res.prefillPositions, generated: res.tokenIds.length, total: seq.totalPositions },
    timings: { ...res.timings, imageEncodeMs },
    ...(seed !== undefined ? { seed } : {}),
  };
}

export type DescribeDetail = 'brief' | 'detailed';

/** `/describe`: v1, brief or detailed prompt, greedy by default. */
export function describe(ctx: TaskContext, image: ImageEmbedding, detail: DescribeDetail, o: RunOptions = {}, imageEncodeMs = 0): Promise<TaskResult> {
  const q = detail === 'brief' ? ctx.manifest.prompts.describe_brief : ctx.manifest.prompts.describe_detailed;
  return run(ctx, 'describe', openSequence(ctx, 'v1', image, q), o, imageEncodeMs);
}

/** `/ask`: v1 with the user's question. */
export function ask(ctx: TaskContext, image: ImageEmbedding, question: string, o: RunOptions = {}, imageEncodeMs = 0): Promise<TaskResult> {
  return run(ctx, 'ask', openSequence(ctx, 'v1', image, question), o, imageEncodeMs);
}

/**
 * A follow-up in an existing conversation: closes the last answer with EOS if needed, appends
 * `USER: {message} ASSISTANT:` and generates. Only the new tokens go through the decoder.
 */
export function chat(ctx: TaskContext, seq: Sequence, message: string, o: RunOptions = {}): Promise<TaskResult> {
  const m = sanitizeUserText(message);
  if (!m) throw new GenerationError('bad_request', 'The message is empty.');
  closeTurn(ctx, seq);
  seq.appendTokens(ctx.tokenizer.encode(userTurn(ctx.manifest.templates[seq.template], m)));
  return run(ctx, 'chat', seq, o, 0);
}

/**
 * `/quiz` (v1_sq): a detailed description first (greedy), then for each round `VUSER:` + a
 * sampled question and ` ASSISTANT:` + its answer — all in one growing Sequence whose cache is
 * reused from round to round. Questions are sampled from one PRNG seeded with `seed`.
 */
export async function quiz(ctx: TaskContext, image: ImageEmbedding, o: QuizOptions, imageEncodeMs = 0): Promise<QuizResult> {
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new GenerationError('bad_request', 'rounds must be a positive integer');
  const seq = openSequence(ctx, 'v1_sq', image, ctx.manifest.prompts.describe_detailed);
  return runQuiz(ctx, seq, o, imageEncodeMs, true);
}

/**
 * More self-questioning rounds on an existing v1_sq conversation ("one more round"): closes the
 * last turn and continues with `VUSER:` question / ` ASSISTANT:` answer pairs on the same
 * Sequence, so only the new tokens are computed. The result's `description` is empty.
 */
export async function continueQuiz(ctx: TaskContext, seq: Sequence, o: QuizOptions): Promise<QuizResult> {
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new GenerationError('bad_request', 'rounds must be a positive integer');
  if (seq.template !== 'v1_sq') throw new GenerationError('bad_request', 'this conversation is not a quiz');
  return runQuiz(ctx, seq, o, 0, false);
}

/** How many times a quiz question that repeats an earlier round's is sampled again. */
const QUESTION_RETRIES = 3;

/** The questions of the `VUSER` turns already in a quiz sequence ("one more round" continues one). */
function earlierQuestions(ctx: TaskContext, seq: Sequence): string[] {
  const vuser = ctx.tokenizer.encode(vuserTurn(ctx.manifest.templates.v1_sq));
  const eos = ctx.tokenizer.eosId;
  const toks = seq.tokens;
  const out: string[] = [];
  for (let i = 0; i + vuser.length <= toks.length; i++) {
    if (!vuser.every((v, j) => toks[i + j] === v)) continue;
    let end = i + vuser.length;
    while (end < toks.length && toks[end] !== eos) end++;
    out.push(ctx.tokenizer.decode(toks.slice(i + vuser.length, end)));
  }
  return out;
}

/** Questions that differ only in case, spacing or end punctuation are the same question. */
function sameQuestion(text: string): string {
  return text.toLowerCase().replace(/\s+/g, ' ').replace(/[\s?.!]+$/, '').trim();
}

async function runQuiz(ctx: TaskContext, seq: Sequence, o: QuizOptions, imageEncodeMs: number, describeFirst: boolean): Promise<QuizResult> {
  const t0 = performance.now();
  const tpl = ctx.manifest.templates.v1_sq;
  const seed = o.seed ?? randomSeed();
  const rng = new Rng(seed);
  const gen = ctx.manifest.generation;
  let prefillMs = 0;
  let decodeMs = 0;
  let generated = 0;
  let promptPositions = 0;
  const common = { repetitionGuard: o.repetitionGuard ?? ctx.repetitionGuard, shouldStop: o.shouldStop, signal: o.signal };
  const step = async (task: GenerationTask, part: QuizEvent['part'], round: number, sampled: boolean, stream = true) => {
    const spec = gen[task];
    const sampling: SamplingParams = sampled
      ? { temperature: spec.temperature, topK: spec.top_k, topP: spec.top_p, repetitionPenalty: spec.repetition_penalty }
      : samplingFor(spec, o);
    const r = await generate(ctx.runner, ctx.tokenizer, seq, {
      ...common,
      maxNewTokens: Math.min(spec.max_new_tokens, o.maxNewTokens ?? Infinity),
      sampling,
      rng: sampling.temperature > 0 ? rng : null,
      onToken: o.onToken && stream ? (ev) => o.onToken!({ ...ev, part, round }) : undefined,
    });
    prefillMs += r.timings.prefillMs;
    decodeMs += r.timings.decodeMs;
    generated += r.tokenIds.length;
    promptPositions += r.prefillPositions;
    return r;
  };

  const d = describeFirst ? await step('describe', 'description', -1, false) : { text: '', finishReason: 'eos' as FinishReason };
  const rounds: QuizRound[] = [];
  const asked = new Set(earlierQuestions(ctx, seq).map(sameQuestion));
  let finish: FinishReason = d.finishReason;
  const stopped = (f: FinishReason) => f === 'cancelled' || f === 'context';
  for (let i = 0; i < o.rounds && !stopped(finish); i++) {
    const extra = ctx.tokenizer.encode(vuserTurn(tpl)).length + ctx.tokenizer.encode(sqAnswerTurn(tpl)).length + 2;
    if (seq.totalPositions + extra + 2 >= ctx.runner.maxPositions) {
      finish = 'context';
      break;
    }
    closeTurn(ctx, seq);
    seq.appendTokens(ctx.tokenizer.encode(vuserTurn(tpl)));
    // A question that repeats an earlier round's is sampled again from the same point, so each
    // question is streamed whole once it is kept.
    const before = seq.snapshot();
    let q = await step('quiz_question', 'question', i, true, false);
    for (let retry = 0; retry < QUESTION_RETRIES && !stopped(q.finishReason) && asked.has(sameQuestion(q.text)); retry++) {
      seq.rewind(before);
      q = await step('quiz_question', 'question', i, true, false);
    }
    asked.add(sameQuestion(q.text));
    if (o.onToken && q.tokenIds.length) {
      o.onToken({ text: q.text, tokenId: q.tokenIds[q.tokenIds.length - 1], index: q.tokenIds.length - 1, part: 'question', round: i });
    }
    finish = q.finishReason;
    if (stopped(finish)) {
      rounds.push({ question: q.text.trim(), answer: '', questionFinish: q.finishReason, answerFinish: 'cancelled' });
      break;
    }
    closeTurn(ctx, seq);
    seq.appendTokens(ctx.tokenizer.encode(sqAnswerTurn(tpl)));
    const a = await step('quiz_answer', 'answer', i, false);
    finish = a.finishReason;
    rounds.push({ question: q.text.trim(), answer: a.text.trim(), questionFinish: q.finishReason, answerFinish: a.finishReason });
  }
  const totalMs = performance.now() - t0;
  return {
    description: d.text.trim(),
    descriptionFinish: d.finishReason,
    rounds,
    sequence: seq,
    seed,
    finishReason: stopped(finish) ? finish : 'eos',
    tokens: { prompt: promptPositions, generated, total: seq.totalPositions },
    timings: { imageEncodeMs, totalMs, prefillMs, decodeMs, tokensPerSecond: decodeMs > 0 ? (generated * 1000) / decodeMs : 0 },
  };
}
