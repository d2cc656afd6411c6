/**
 * Conversation state of one token sequence: the tokens so far, the KV cache of the positions
 * already run through the decoder, and the image embedding. Plain typed arrays only (no ORT
 * objects), so a Sequence can be kept in a cache, structured-cloned across threads or
 * serialised, and continued later without recomputing anything.
 */
import type { TemplateName } from './prompt';
import { IMAGE_TOKEN_INDEX, PromptPiece } from './tokenizer';

/** One layer's cache, each `[1, kvHeads, length, headDim]` row-major. */
export interface LayerCache {
  key: Float32Array;
  value: Float32Array;
}

export interface KvCache {
  /** Positions held (text tokens + image tokens fed so far). */
  length: number;
  layers: LayerCache[];
}

/** Projected image embeddings `[1, N, H]` (output of the vision graph). */
export interface ImageEmbedding {
  data: Float32Array;
  numTokens: number;
  hidden: number;
}

/** Serialisable snapshot (typed arrays survive structured clone and transfer). */
export interface SequenceState {
  template: TemplateName;
  tokens: number[];
  pending: PromptPiece[];
  cache: KvCache;
  image: ImageEmbedding | null;
  lastLogits: Float32Array | null;
}

export class Sequence {
  /** Every token of the conversation, fed or pending; the image is one IMAGE_TOKEN_INDEX entry. */
  tokens: number[];
  /** Appended but not yet run through the decoder. */
  pending: PromptPiece[];
  cache: KvCache;
  image: ImageEmbedding | null;
  /** Logits after the last fed position (null when pending is non-empty or nothing was fed). */
  lastLogits: Float32Array | null;

  constructor(
    readonly template: TemplateName,
    numLayers: number,
    image: ImageEmbedding | null = null,
  ) {
    this.tokens = [];
    this.pending = [];
    this.cache = { length: 0, layers: Array.from({ length: numLayers }, () => ({ key: new Float32Array(0), value: new Float32Array(0) })) };
    this.image = image;
    this.lastLogits = null;
  }

  static restore(state: SequenceState): Sequence {
    const s = new Sequence(state.template, state.cache.layers.length, state.image);
    s.rewind(state);
    return s;
  }

  /**
   * A sequence whose whole token list (IMAGE_TOKEN_INDEX for the image) is pending: rebuilds a
   * conversation's cache from its tokens alone (e.g. after the KV cache was evicted).
   */
  static fromTokens(template: TemplateName, numLayers: number, image: ImageEmbedding | null, tokens: readonly number[]): Sequence {
    const s = new Sequence(template, numLayers, image);
    let run: number[] = [];
    const pieces: PromptPiece[] = [];
    for (const t of tokens) {
      if (t === IMAGE_TOKEN_INDEX) {
        if (run.length) pieces.push({ kind: 'text', ids: run });
        pieces.push({ kind: 'image' });
        run = [];
      } else run.push(t);
    }
    if (run.length) pieces.push({ kind: 'text', ids: run });
    s.append(pieces);
    return s;
  }

  snapshot(): SequenceState {
    return {
      template: this.template,
      tokens: [...this.tokens],
      pending: this.pending.map((p) => (p.kind === 'text' ? { kind: 'text', ids: [...p.ids] } : p)),
      cache: this.cache,
      image: this.image,
      lastLogits: this.lastLogits,
    };
  }

  /**
   * Goes back to a snapshot taken earlier from this sequence, dropping what was appended and
   * generated since. Cheap: the runner never writes a cache in place (each run returns new
   * arrays), so the snapshot's cache is still the one it saw.
   */
  rewind(state: SequenceState): void {
    this.tokens = [...state.tokens];
    this.pending = state.pending.map((p) => (p.kind === 'text' ? { kind: 'text', ids: [...p.ids] } : p));
    this.cache = state.cache;
    this.lastLogits = state.lastLogits;
  }

  /** Appends prompt pieces (text ids and/or the image) to be fed on the next run. */
  append(pieces: readonly PromptPiece[]): void {
    for (const p of pieces) {
      if (p.kind === 'image' && !this.image) throw new Error('sequence has no image embedding for <image>');
      const last = this.pending[this.pending.length - 1];
      if (p.kind === 'text' && last?.kind === 'text') last.ids.push(...p.ids);
      else this.pending.push(p.kind === 'text' ? { kind: 'text', ids: [...p.ids] } : p);
      this.tokens.push(...(p.kind === 'text' ? p.ids : [IMAGE_TOKEN_INDEX]));
    }
    if (pieces.length) this.lastLogits = null;
  }

  appendTokens(ids: readonly number[]): void {
    if (ids.length) this.append([{ kind: 'text', ids: [...ids] }]);
  }

  /** Number of decoder positions the pending pieces will take. */
  get pendingPositions(): number {
    return this.pending.reduce((n, p) => n + (p.kind === 'text' ? p.ids.length : this.image!.numTokens), 0);
  }

  /** Decoder positions of the whole sequence (fed + pending). */
  get totalPositions(): number {
    return this.cache.length + this.pendingPositions;
  }

  /** Last token of the sequence (IMAGE_TOKEN_INDEX when it is the image), or undefined. */
  get lastToken(): number | undefined {
    return this.tokens[this.tokens.length - 1];
  }

  /** Bytes held by the KV cache (for LRU accounting). */
  get cacheBytes(): number {
    return this.cache.layers.reduce((n, l) => n + l.key.byteLength + l.value.byteLength, 0);
  }
}
