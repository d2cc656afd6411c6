/**
 * The only place that calls `session.run`: image encoding, token embedding, and decoder passes
 * over Sequences (prefill of pending pieces; batched single-token decode steps).
 *
 * The decode step takes several sequences at once so that continuous batching can be added by a
 * scheduler without touching the graph plumbing: sequences of different lengths are left-padded
 * to a common past length, the padding masked with attention_mask 0 and position_ids counting
 * real tokens only, as the bundle contract specifies.
 */
import * as ort from 'onnxruntime-node';

import type { ModelBundle } from './bundle';
import { GenerationError } from './errors';
import type { ImageEmbedding, KvCache, Sequence } from './sequence';

function i64(values: readonly number[]): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

export class ModelRunner {
  readonly hidden: number;
  readonly vocab: number;
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly maxPositions: number;

  constructor(readonly bundle: ModelBundle) {
    const d = bundle.manifest.decoder;
    this.hidden = d.hidden_size;
    this.vocab = d.vocab_size;
    this.layers = d.num_layers;
    this.kvHeads = d.num_kv_heads;
    this.headDim = d.head_dim;
    this.maxPositions = d.max_position_embeddings;
  }

  /** pixels `[1,3,S,S]` → projected image embeddings `[1,N,H]`. */
  async encodeImage(pixels: Float32Array): Promise<ImageEmbedding> {
    const m = this.bundle.manifest;
    const S = m.image.size;
    if (pixels.length !== 3 * S * S) {
      throw new GenerationError('bad_request', `pixel tensor has ${pixels.length} values, expected 3x${S}x${S}`);
    }
    const out = await this.bundle.sessions.vision.run({ [m.vision.input]: new ort.Tensor('float32', pixels, [1, 3, S, S]) });
    const t = out[m.vision.output];
    return { data: t.data as Float32Array, numTokens: Number(t.dims[1]), hidden: Number(t.dims[2]) };
  }

  /** token ids → embeddings `[T*H]`. */
  async embed(ids: readonly number[]): Promise<Float32Array> {
    const m = this.bundle.manifest;
    const out = await this.bundle.sessions.embed.run({ [m.embed.input]: new ort.Tensor('int64', i64(ids), [1, ids.length]) });
    return out[m.embed.output].data as Float32Array;
  }

  /** Builds inputs_embeds for the sequence's pending pieces (text embedded in one run, image spliced in). */
  private async pendingEmbeds(seq: Sequence): Promise<{ embeds: Float32Array; T: number }> {
    const H = this.hidden;
    const textIds = seq.pending.flatMap((p) => (p.kind === 'text' ? p.ids : []));
    const textEmb = textIds.length ? await this.embed(textIds) : new Float32Array(0);
    const T = seq.pendingPositions;
    const embeds = new Float32Array(T * H);
    let pos = 0;
    let textPos = 0;
    for (const p of seq.pending) {
      if (p.kind === 'text') {
        embeds.set(textEmb.subarray(textPos * H, (textPos + p.ids.length) * H), pos * H);
        textPos += p.ids.length;
        pos += p.ids.length;
      } else {
        const img = seq.image!;
        if (img.hidden !== H) throw new GenerationError('bad_request', `image embedding width ${img.hidden} != decoder hidden size ${H}`);
        embeds.set(img.data, pos * H);
        pos += img.numTokens;
      }
    }
    return { embeds, T };
  }

  /**
   * Runs the sequence's pending pieces through the decoder in one pass, extending its cache;
   * returns the logits of the last position (also kept as `seq.lastLogits`).
   */
  async prefill(seq: Sequence): Promise<Float32Array> {
    if (seq.pending.length === 0) {
      if (seq.lastLogits) return seq.lastLogits;
      throw new GenerationError('bad_request', 'nothing to run: the sequence is empty');
    }
    const total = seq.totalPositions;
    if (total > this.maxPositions) {
      throw new GenerationError('context_full', `conversation needs ${total} positions; the model's context is ${this.maxPositions}`);
    }
    const { embeds, T } = await this.pendingEmbeds(seq);
    const P = seq.cache.length;
    const positions = Array.from({ length: T }, (_, i) => P + i);
    const mask = new Array<number>(P + T).fill(1);
    const out = await this.runDecoder(embeds, 1, T, mask, positions, seq.cache.layers, P);
    seq.cache = this.takeCache(out, 1, P + T, 0, P + T);
    seq.pending = [];
    const V = this.vocab;
    const logits = (out[this.bundle.decoderNames.logits].data as Float32Array).slice((T - 1) * V, T * V);
    seq.lastLogits = logits;
    return logits;
  }

  /**
   * One decode step for several sequences, each fed exactly one pending token. Caches are
   * left-padded to the longest; each sequence gets back its own unpadded cache and logits.
   */
  async decodeStep(seqs: readonly Sequence[]): Promise<Float32Array[]> {
    const B = seqs.length;
    if (B === 0) return [];
    for (const s of seqs) {
      const p = s.pending;
      if (p.length !== 1 || p[0].kind !== 'text' || p[0].ids.length !== 1) {
        throw new GenerationError('bad_request', 'decodeStep needs exactly one pending token per sequence');
      }
      if (s.cache.length + 1 > this.maxPositions) throw new GenerationError('context_full', 'context full');
    }
    const ids = seqs.map((s) => (s.pending[0] as { ids: number[] }).ids[0]);
    const H = this.hidden;
    const emb = await this.embed(ids); // [B*H] (one row per sequence; embed graph takes [1,B])
    const Pmax = Math.max(...seqs.map((s) => s.cache.length));
    const mask: number[] = [];
    const positions: number[] = [];
    for (const s of seqs) {
      const pad = Pmax - s.cache.length;
      for (let j = 0; j < Pmax + 1; j++) mask.push(j < pad ? 0 : 1);
      positions.push(s.cache.length);
    }
    // One sequence feeds its cache as is (zero-copy); a batch needs the padded copy.
    const pastArg = B > 1 ? this.asLayers(this.padCaches(seqs, Pmax)) : seqs[0].cache.layers;
    const out = await this.runDecoder(emb.subarray(0, B * H), B, 1, mask, positions, pastArg, Pmax);
    const V = this.vocab;
    const logitsAll = out[this.bundle.decoderNames.logits].data as Float32Array;
    return seqs.map((s, b) => {
      const len = s.cache.length + 1;
      s.cache = this.takeCache(out, B, Pmax + 1, b, len);
      s.pending = [];
      const logits = B === 1 ? logitsAll : logitsAll.slice(b * V, (b + 1) * V);
      s.lastLogits = logits;
      return logits;
    });
  }

  /** Packs per-layer key/value buffers into the flat order runDecoder takes. */
  private asLayers(flat: Float32Array[]): KvCache['layers'] {
    const layers: KvCache['layers'] = [];
    for (let l = 0; l < this.layers; l++) layers.push({ key: flat[2 * l], value: flat[2 * l + 1] });
    return layers;
  }

  /** Left-pads each sequence's cache to Pmax into `[B,kvH,Pmax,D]` buffers. */
  private padCaches(seqs: readonly Sequence[], Pmax: number): Float32Array[] {
    const { kvHeads: K, headDim: D } = this;
    const B = seqs.length;
    const out: Float32Array[] = [];
    for (let l = 0; l < this.layers; l++) {
      for (const which of ['key', 'value'] as const) {
        const buf = new Float32Array(B * K * Pmax * D);
        seqs.forEach((s, b) => {
          const P = s.cache.length;
          const src = s.cache.layers[l][which];
          for (let h = 0; h < K; h++) {
            const dst = ((b * K + h) * Pmax + (Pmax - P)) * D;
            buf.set(src.subarray(h * P * D, (h + 1) * P * D), dst);
          }
        });
        out.push(buf);
      }
    }
    return out;
  }

  /** Extracts row `b`'s last `len` positions of the present tensors as the sequence's cache. */
  private takeCache(out: ort.InferenceSession.OnnxValueMapType, B: number, total: number, b: number, len: number): KvCache {
    const n = this.bundle.decoderNames;
    const { kvHeads: K, headDim: D } = this;
    const layers: KvCache['layers'] = [];
    for (let l = 0; l < this.layers; l++) {
      const key = out[n.presentKey[l]].data as Float32Array;
      const value = out[n.presentValue[l]].data as Float32Array;
      if (B === 1 && len === total) {
        // Single sequence: the present tensors are exactly the next past; no copy.
        layers.push({ key, value });
        continue;
      }
      const pick = (src: Float32Array) => {
        const dst = new Float32Array(K * len * D);
        for (let h = 0; h < K; h++) {
          const from = ((b * K + h) * total + (total - len)) * D;
          dst.set(src.subarray(from, from + len * D), h * len * D);
        }
        return dst;
      };
      layers.push({ key: pick(key), value: pick(value) });
    }
    return { length: len, layers };
  }

  private async runDecoder(
    embeds: Float32Array,
    B: number,
    T: number,
    mask: number[],
    positions: number[],
    past: KvCache['layers'],
    P: number,
  ): Promise<ort.InferenceSession.OnnxValueMapType> {
    const n = this.bundle.decoderNames;
    const { kvHeads: K, headDim: D } = this;
    const feeds: Record<string, ort.Tensor> = {
      [n.embeds]: new ort.Tensor('float32', embeds, [B, T, this.hidden]),
      [n.attentionMask]: new ort.Tensor('int64', i64(mask), [B, P + T]),
      [n.positionIds]: new ort.Tensor('int64', i64(positions), [B, T]),
    };
    for (let l = 0; l < this.layers; l++) {
      feeds[n.pastKey[l]] = new ort.Tensor('float32', past[l].key, [B, K, P, D]);
      feeds[n.pastValue[l]] = new ort.Tensor('float32', past[l].value, [B, K, P, D]);
    }
    try {
      return await this.bundle.sessions.decoder.run(feeds);
    } catch (err) {
      throw new GenerationError('runtime', `decoder run failed: ${(err as Error).message}`, { cause: err });
    }
  }
}
