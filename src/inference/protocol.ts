/**
 * Internal protocol between the local pool client (main thread) and its piscina workers. Core
 * never sees these types: it speaks `InferenceJob` / `JobEvent` (types.ts).
 *
 * Zero-copy rules (docs: runtime-findings §4):
 * - image bytes and image embeddings travel as SharedArrayBuffer-backed views: shared, not
 *   copied, usable by several jobs at once, and still there if a worker dies (retry);
 * - a conversation's KV cache (SequenceState) is *transferred* with the job and back with the
 *   result (the main-thread cache drops the entry while the job is in flight);
 * - nothing here is an ort.Tensor (they cannot cross threads).
 */
import type { MessagePort } from 'node:worker_threads';

import type { EngineInfo, ImageEmbedding, SequenceState } from '../model';
import type { BatchStats } from './batcher';
import type { InferenceJob, JobError, JobResult, QuizPart } from './types';

export interface WorkerTask {
  kind: 'job';
  job: InferenceJob;
  /** 1 = first try, 2 = retry after a worker died. */
  attempt: number;
  /** Events to the caller ('started', 'token', 'embedding'); transferred. */
  port: MessagePort;
  /** Int32Array over a SharedArrayBuffer: [0] != 0 → stop at the next decode step. */
  cancel: Int32Array;
  /** Cached image embedding (SharedArrayBuffer-backed). */
  embedding?: ImageEmbedding;
  /** Cached conversation state; its buffers are transferred. */
  state?: SequenceState;
}

export interface WarmupTask {
  kind: 'info';
}

export type WorkerRequest = WorkerTask | WarmupTask;

export type PortMessage =
  | { type: 'started'; worker: string }
  | { type: 'token'; text: string; part?: QuizPart; round?: number }
  /** Sent as soon as a new image is encoded, so the client caches it even if the job fails. */
  | { type: 'embedding'; digest: string; embedding: ImageEmbedding };

export interface WorkerStats {
  worker: string;
  batches: BatchStats;
}

export type WorkerResponse =
  | {
      ok: true;
      result: JobResult;
      /** The conversation's state after the job (buffers transferred back). */
      state: SequenceState;
      /** Number of turns `state` corresponds to (consistency check against job.history). */
      turns: number;
      stats: WorkerStats;
    }
  | { ok: false; error: JobError; stats: WorkerStats }
  | { ok: true; info: EngineInfo; stats: WorkerStats };

/** Messages on the pool's BroadcastChannel (worker → client) about the model load. */
export type LifecycleMessage =
  | { type: 'ready'; worker: string; slot: number; threadId: number; info: EngineInfo; loadMs: number }
  | { type: 'load_error'; worker: string; message: string };

export interface WorkerData {
  bundleDir: string;
  /** Engine/session options for every worker (deviceId is filled in per worker). */
  engine: {
    dtype?: 'fp32' | 'fp16';
    device?: 'cpu' | 'cuda';
    intraOpNumThreads?: number;
    interOpNumThreads?: number;
    sessionConfig?: Record<string, string>;
    imageLimits?: { maxBytes?: number; maxPixels?: number };
  };
  /** Int32Array(slots + 1) over a SharedArrayBuffer: slot i holds the threadId using it; [slots] is a change counter. */
  slots: SharedArrayBuffer;
  /** BroadcastChannel name for lifecycle messages. */
  channel: string;
  /** Host label used in worker names. */
  host: string;
  maxBatch: number;
}

/** Collects the distinct, transferable ArrayBuffers under a SequenceState (never SharedArrayBuffers). */
export function stateTransferList(state: SequenceState | undefined): ArrayBuffer[] {
  if (!state) return [];
  const set = new Set<ArrayBuffer>();
  const add = (a: ArrayBufferView | null | undefined) => {
    if (a && a.buffer instanceof ArrayBuffer && a.buffer.byteLength > 0) set.add(a.buffer);
  };
  for (const l of state.cache.layers) {
    add(l.key);
    add(l.value);
  }
  add(state.lastLogits);
  // The image embedding is shared (SharedArrayBuffer) in the normal case; a private one is copied by clone.
  return [...set];
}

/** A copy of `src` in a SharedArrayBuffer (shared with workers instead of copied per job). */
export function toShared<T extends Float32Array | Uint8Array>(src: T): T {
  if (src.buffer instanceof SharedArrayBuffer) return src;
  const Ctor = src.constructor as { new (b: SharedArrayBuffer): T };
  const out = new Ctor(new SharedArrayBuffer(src.byteLength));
  out.set(src as never);
  return out;
}
