/**
 * Next-token choice: greedy, or temperature + top-k + top-p sampling from a seeded PRNG so that
 * a sampled answer is reproducible from its `seed`; plus an optional repetition penalty and a
 * repetition guard that ends generation when the output falls into a loop (small models do).
 */

export interface SamplingParams {
  /** 0 = greedy (argmax). */
  temperature: number;
  /** Keep the k most likely tokens (0/undefined = all). */
  topK?: number;
  /** Keep the smallest set whose probability reaches p (1/undefined = all). */
  topP?: number;
  /** CTRL/HF-style penalty (>1 discourages tokens already generated); 1/undefined = off. */
  repetitionPenalty?: number;
  /** Token ids never to pick (e.g. EOS to force a minimum length, as the golden files do). */
  suppressTokens?: readonly number[];
}

export interface RepetitionGuard {
  /** Longest loop period (tokens) looked for. */
  maxPeriod: number;
  /** Stop when the tail is the same period repeated this many times… */
  minRepeats: number;
  /** …and the repeated span is at least this many tokens. */
  minSpan: number;
}

export const DEFAULT_REPETITION_GUARD: RepetitionGuard = { maxPeriod: 16, minRepeats: 4, minSpan: 32 };

/** mulberry32: tiny, fast, good enough for sampling; identical on every platform. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Current state, to persist a conversation's sampler between requests. */
  get seedState(): number {
    return this.state;
  }
}

/** A fresh random seed (for requests that did not give one; report it so the result can be replayed). */
export function randomSeed(): number {
  return (Math.random() * 0x100000000) >>> 0;
}

/** Index of the largest logit (the first one on ties, as torch.argmax). */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > bestV) {
      bestV = logits[i];
      best = i;
    }
  }
  return best;
}

/** Applies the repetition penalty in place to a copy of the logits. */
function penalised(logits: Float32Array, history: readonly number[], penalty: number): Float32Array {
  const out = logits.slice();
  const seen = new Set(history);
  for (const id of seen) {
    if (id < 0 || id >= out.length) continue;
    out[id] = out[id] > 0 ? out[id] / penalty : out[id] * penalty;
  }
  return out;
}

/**
 * Picks the next token. `history` is the generated tokens so far (for the penalty only).
 * Order as in HF `generate`: penalty, suppression, temperature, top-k, top-p, then sample.
 */
export function sampleToken(logits: Float32Array, params: SamplingParams, rng: Rng | null, history: readonly number[] = []): number {
  const pen = params.repetitionPenalty;
  let l = pen && pen !== 1 ? penalised(logits, history, pen) : logits;
  if (params.suppressTokens?.length) {
    if (l === logits) l = logits.slice();
    for (const id of params.suppressTokens) if (id >= 0 && id < l.length) l[id] = -Infinity;
  }
  if (!params.temperature || params.temperature <= 0 || !rng) return argmax(l);

  const V = l.length;
  const invT = 1 / params.temperature;
  // Top-k candidates: find the k-th largest logit with a native numeric sort of a copy, then
  // sort only the candidates (a comparator sort of all 32k indices costs ~10 ms per token).
  const k = params.topK && params.topK > 0 ? Math.min(params.topK, V) : V;
  let idx: number[];
  if (k < V) {
    const threshold = Float32Array.from(l).sort()[V - k];
    idx = [];
    for (let i = 0; i < V; i++) if (l[i] >= threshold) idx.push(i);
  } else {
    idx = Array.from({ length: V }, (_, i) => i);
  }
  idx.sort((a, b) => l[b] - l[a] || a - b);
  idx = idx.slice(0, k);

  const maxL = l[idx[0]] * invT;
  const probs = new Float64Array(idx.length);
  let sum = 0;
  for (let i = 0; i < idx.length; i++) {
    probs[i] = Math.exp(l[idx[i]] * invT - maxL);
    sum += probs[i];
  }
  let n = idx.length;
  const topP = params.topP ?? 1;
  if (topP < 1) {
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    let cum = 0;
    for (let i = 0; i < idx.length; i++) {
      cum += probs[i] / sum;
      if (cum >= topP) {
        n = i + 1;
        break;
      }
    }
    sum = 0;
    for (let i = 0; i < n; i++) sum += probs[i];
  }
  let r = rng.next() * sum;
  for (let i = 0; i < n; i++) {
    r -= probs[i];
    if (r < 0) return idx[i];
  }
  return idx[n - 1];
}

/**
 * True when the tail of `tokens` is one short pattern repeated (e.g. "the the the …" or a
 * recurring sentence): generation should stop rather than fill the reply with a loop.
 */
export function isLooping(tokens: readonly number[], guard: RepetitionGuard = DEFAULT_REPETITION_GUARD): boolean {
  const n = tokens.length;
  for (let p = 1; p <= guard.maxPeriod; p++) {
    const need = Math.max(guard.minRepeats, Math.ceil(guard.minSpan / p)) * p;
    if (need > n) continue;
    let ok = true;
    for (let i = n - need; i < n - p; i++) {
      if (tokens[i] !== tokens[i + p]) {
        ok = false;
        break;
      }
    }
    if (ok) return true;
  }
  return false;
}
