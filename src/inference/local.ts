/**
 * The local inference client: a bounded priority queue on the main thread in front of a piscina
 * pool of inference workers, plus the two caches (image embeddings, conversation states).
 *
 * - Admission: at most `workers × concurrentTasksPerWorker` jobs run at once (they are decoded
 *   together in batches inside each worker); the rest wait here, 'interactive' before 'batch',
 *   FIFO within a priority, so every waiting job knows its exact place. A full queue refuses a
 *   new job at once ('busy').
 * - Caches live here, not in the workers, so any worker can serve any conversation: the job takes
 *   the conversation's state with it (transferred; the entry leaves the cache while in flight)
 *   and brings the new state back. Embeddings are SharedArrayBuffer-backed and shared.
 * - Deadlines and cancellation are cooperative: a SharedArrayBuffer flag the worker checks
 *   between decode steps. Workers are never terminated mid-run (that aborts the process).
 * - A worker that dies fails its jobs in piscina; each is retried once (on the replacement or
 *   another worker), then fails with 'worker_failed'.
 */
import { randomUUID } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { BroadcastChannel, MessageChannel, MessagePort, receiveMessageOnPort } from 'node:worker_threads';

import { LRUCache } from 'lru-cache';
import { Piscina } from 'piscina';

import type { EngineInfo, ImageEmbedding, SequenceState } from '../model';
import { LifecycleMessage, PortMessage, stateTransferList, toShared, WorkerData, WorkerResponse, WorkerStats, WorkerTask } from './protocol';
import { planPool, Sizing } from './sizing';
import { InferenceClient, InferenceError, InferenceJob, InferenceStats, JobError, JobEvent, JobResult, RunHandle } from './types';
import { isQuizContinuation } from './worker-core';

export interface LocalInferenceLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface LocalInferenceOptions {
  /** Model bundle folder (model.json + ONNX files). */
  bundleDir: string;
  dtype?: 'fp32' | 'fp16';
  device?: 'cpu' | 'cuda';
  /** cuda: number of GPUs (one worker each, deviceId = worker index). */
  gpus?: number;
  /** CPU: worker count (see sizing.ts for the defaults). */
  workers?: number;
  intraOpNumThreads?: number;
  sessionConfig?: Record<string, string>;
  /** Jobs in flight per worker, decoded together (default 4). */
  concurrentTasksPerWorker?: number;
  /** Largest decode batch in a worker (default 16). */
  maxBatch?: number;
  /** Waiting jobs beyond which new ones are refused with 'busy' (default 32). */
  maxQueue?: number;
  /** LRU byte budgets of the main-thread caches (defaults 256 MiB and 1 GiB). */
  embeddingCacheBytes?: number;
  conversationCacheBytes?: number;
  /** Deadline for jobs that carry none (ms from submission; default none). */
  jobTimeoutMs?: number;
  imageLimits?: { maxBytes?: number; maxPixels?: number };
  /** Give up if the workers have not loaded the model by then (default 120 s). */
  loadTimeoutMs?: number;
  /** Label in worker names (default the host name). */
  host?: string;
  /** Worker entry (tests); default workers/inference-worker.{ts,js}. */
  workerFile?: string;
  logger?: LocalInferenceLogger;
}

export interface LocalInference extends InferenceClient {
  /** Resolves once every worker has loaded the model (createLocalInference already awaited it). */
  readonly ready: Promise<void>;
  readonly info: EngineInfo;
  readonly sizing: Sizing;
}

const silent: LocalInferenceLogger = { info() {}, warn() {}, error() {} };

interface ConversationEntry {
  state: SequenceState;
  turns: number;
  tokens: number;
}

interface Entry {
  job: InferenceJob;
  onEvent: (ev: JobEvent) => void;
  resolve: (r: JobResult) => void;
  reject: (e: InferenceError) => void;
  phase: 'queued' | 'running' | 'finished';
  /** The caller has its answer (result, error, timeout); a running job may still be finishing. */
  settled: boolean;
  attempt: number;
  cancel: Int32Array;
  enqueuedAt: number;
  queueMs: number;
  lastPosition: number;
  timer?: NodeJS.Timeout;
  port?: MessagePort;
}

function defaultWorkerFile(): string {
  const ts = __filename.endsWith('.ts');
  return path.resolve(__dirname, '../../workers', ts ? 'inference-worker.ts' : 'inference-worker.js');
}

function stateBytes(e: ConversationEntry): number {
  const s = e.state;
  let n = s.tokens.length * 8 + (s.lastLogits?.byteLength ?? 0);
  for (const l of s.cache.layers) n += l.key.byteLength + l.value.byteLength;
  return Math.max(1, n);
}

class LocalPool implements LocalInference {
  readonly ready: Promise<void>;
  info!: EngineInfo;
  readonly sizing: Sizing;
  private readonly pool: Piscina;
  private readonly channel: BroadcastChannel;
  private readonly slots: Int32Array;
  private readonly interactive: Entry[] = [];
  private readonly batch: Entry[] = [];
  private running = 0;
  private readonly capacity: number;
  private readonly maxQueue: number;
  private closing = false;
  private restarts = 0;
  private readonly workerStats = new Map<string, WorkerStats>();
  private readonly readyWorkers = new Set<string>();
  private readonly counts = { embeddingHits: 0, embeddingMisses: 0, conversationHits: 0, conversationMisses: 0 };
  private readonly embeddings: LRUCache<string, ImageEmbedding>;
  private readonly conversations: LRUCache<string, ConversationEntry>;
  private readonly log: LocalInferenceLogger;

  private readonly jobTimeoutMs?: number;

  constructor(o: LocalInferenceOptions) {
    this.jobTimeoutMs = o.jobTimeoutMs;
    this.log = o.logger ?? silent;
    this.sizing = planPool({ device: o.device, gpus: o.gpus, workers: o.workers, intraOpNumThreads: o.intraOpNumThreads });
    for (const w of this.sizing.warnings) this.log.warn({ sizing: this.sizing }, w);
    const perWorker = o.concurrentTasksPerWorker ?? 4;
    this.capacity = this.sizing.workers * perWorker;
    this.maxQueue = o.maxQueue ?? 32;
    this.embeddings = new LRUCache<string, ImageEmbedding>({
      maxSize: o.embeddingCacheBytes ?? 256 * 2 ** 20,
      sizeCalculation: (e) => Math.max(1, e.data.byteLength),
    });
    this.conversations = new LRUCache<string, ConversationEntry>({
      maxSize: o.conversationCacheBytes ?? 1024 * 2 ** 20,
      sizeCalculation: stateBytes,
    });
    const slots = new SharedArrayBuffer((this.sizing.workers + 1) * 4);
    this.slots = new Int32Array(slots);
    const channelName = `curio-inference-${randomUUID()}`;
    this.channel = new BroadcastChannel(channelName);
    this.channel.unref();
    const workerData: WorkerData = {
      bundleDir: path.resolve(o.bundleDir),
      engine: {
        dtype: o.dtype,
        device: o.device,
        intraOpNumThreads: this.sizing.intraOpNumThreads,
        interOpNumThreads: 1,
        sessionConfig: o.sessionConfig,
        imageLimits: o.imageLimits,
      },
      slots,
      channel: channelName,
      host: o.host ?? os.hostname(),
      maxBatch: o.maxBatch ?? 16,
    };
    const filename = o.workerFile ?? defaultWorkerFile();
    this.pool = new Piscina({
      filename,
      minThreads: this.sizing.workers,
      maxThreads: this.sizing.workers,
      idleTimeout: 2 ** 31 - 1,
      concurrentTasksPerWorker: perWorker,
      // Workers run async, event-driven jobs side by side: never block them in Atomics.wait.
      atomics: 'disabled',
      execArgv: filename.endsWith('.ts') ? ['--import', 'tsx'] : [],
      workerData,
    });
    this.pool.on('error', (err: Error) => {
      this.log.error({ err: err.message }, 'inference worker error outside a job');
    });
    this.pool.on('workerDestroy', () => {
      if (!this.closing) {
        this.restarts++;
        this.log.warn({ restarts: this.restarts }, 'inference worker died; replacing it');
      }
      setImmediate(() => this.freeDeadSlots());
    });

    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new InferenceError('unavailable', `inference workers did not load the model within ${o.loadTimeoutMs ?? 120000} ms`)),
        o.loadTimeoutMs ?? 120000,
      );
      // (kept referenced: it holds the process open while the workers load)
      this.channel.onmessage = (ev) => {
        const m = (ev as MessageEvent).data as LifecycleMessage;
        if (m.type === 'ready') {
          this.info ??= m.info;
          this.readyWorkers.add(m.worker);
          this.log.info({ worker: m.worker, loadMs: Math.round(m.loadMs), slot: m.slot }, 'inference worker ready');
          if (this.readyWorkers.size >= this.sizing.workers) {
            clearTimeout(timer);
            resolve();
            this.pump();
          }
        } else {
          if (this.readyWorkers.size >= this.sizing.workers) return; // a replacement failed later: jobs report it
          this.log.error({ worker: m.worker, err: m.message }, 'inference worker could not load the model');
          clearTimeout(timer);
          reject(new InferenceError('unavailable', `the model could not be loaded: ${m.message}`));
        }
      };
    });
    this.ready.catch(() => {});
  }

  private freeDeadSlots(): void {
    const live = new Set(this.pool.threads.map((t) => t.threadId).filter((id) => id > 0));
    const n = this.slots.length - 1;
    let freed = false;
    for (let i = 0; i < n; i++) {
      const v = Atomics.load(this.slots, i);
      if (v !== 0 && !live.has(v) && Atomics.compareExchange(this.slots, i, v, 0) === v) freed = true;
    }
    if (freed) {
      Atomics.add(this.slots, n, 1);
      Atomics.notify(this.slots, n);
    }
  }

  // ---- public API ------------------------------------------------------------------------

  run(job: InferenceJob, onEvent: (event: JobEvent) => void): RunHandle {
    let resolve!: (r: JobResult) => void;
    let reject!: (e: InferenceError) => void;
    const result = new Promise<JobResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    result.catch(() => {}); // the caller may only listen to events
    if (job.deadline === undefined && this.jobTimeoutMs) job = { ...job, deadline: Date.now() + this.jobTimeoutMs };
    const image = job.image.bytes ? { digest: job.image.digest, bytes: toShared(job.image.bytes) } : { digest: job.image.digest };
    const e: Entry = {
      job: { ...job, image },
      onEvent,
      resolve,
      reject,
      phase: 'queued',
      settled: false,
      attempt: 1,
      cancel: new Int32Array(new SharedArrayBuffer(4)),
      enqueuedAt: Date.now(),
      queueMs: 0,
      lastPosition: 0,
    };
    const handle: RunHandle = { result, cancel: () => this.cancel(e) };
    if (this.closing) {
      this.fail(e, new InferenceError('unavailable', 'The bot is shutting down; please try again shortly.'));
      return handle;
    }
    if (job.deadline !== undefined) {
      const ms = job.deadline - Date.now();
      if (ms <= 0) {
        this.fail(e, new InferenceError('timeout', 'The request timed out before it could start.'));
        return handle;
      }
      e.timer = setTimeout(() => this.expire(e), ms);
      e.timer.unref();
    }
    if (this.queued() >= this.maxQueue) {
      this.fail(e, new InferenceError('busy', 'The model is busy; please try again in a moment.', this.retryAfterMs()));
      return handle;
    }
    this.enqueue(e, false);
    this.pump();
    if (e.phase === 'queued') this.announcePositions();
    return handle;
  }

  stats(): InferenceStats {
    const b = { steps: 0, sequences: 0, maxBatch: 0, histogram: {} as Record<number, number> };
    for (const s of this.workerStats.values()) {
      b.steps += s.batches.steps;
      b.sequences += s.batches.sequences;
      b.maxBatch = Math.max(b.maxBatch, s.batches.maxBatch);
      for (const [k, v] of Object.entries(s.batches.histogram)) b.histogram[Number(k)] = (b.histogram[Number(k)] ?? 0) + v;
    }
    return {
      queued: this.queued(),
      running: this.running,
      workers: this.pool.threads.length,
      workerRestarts: this.restarts,
      cache: { ...this.counts },
      cacheBytes: { embeddings: this.embeddings.calculatedSize, conversations: this.conversations.calculatedSize },
      batches: b,
    };
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const e of [...this.interactive, ...this.batch]) this.fail(e, new InferenceError('unavailable', 'The bot is shutting down; please try again shortly.'));
    this.interactive.length = 0;
    this.batch.length = 0;
    // close(), never destroy(): running jobs finish their current step (a destroy mid-run aborts the process).
    await this.pool.close();
    this.channel.close();
  }

  // ---- queue -----------------------------------------------------------------------------

  private queued(): number {
    return this.interactive.length + this.batch.length;
  }

  private retryAfterMs(): number {
    return 2000 + 500 * this.queued();
  }

  private enqueue(e: Entry, front: boolean): void {
    const q = e.job.priority === 'batch' ? this.batch : this.interactive;
    e.phase = 'queued';
    if (front) q.unshift(e);
    else q.push(e);
  }

  private dequeue(e: Entry): boolean {
    for (const q of [this.interactive, this.batch]) {
      const i = q.indexOf(e);
      if (i >= 0) {
        q.splice(i, 1);
        return true;
      }
    }
    return false;
  }

  private announcePositions(): void {
    let pos = 0;
    for (const e of [...this.interactive, ...this.batch]) {
      pos++;
      if (e.lastPosition !== pos) {
        e.lastPosition = pos;
        this.emit_(e, { type: 'queued', position: pos });
      }
    }
  }

  private pump(): void {
    if (this.closing || this.readyWorkers.size === 0) return;
    let moved = false;
    while (this.running < this.capacity) {
      const e = this.interactive.shift() ?? this.batch.shift();
      if (!e) break;
      moved = true;
      this.dispatch(e);
    }
    if (moved) this.announcePositions();
  }

  // ---- one job on a worker ---------------------------------------------------------------

  private dispatch(e: Entry): void {
    const job = e.job;
    e.phase = 'running';
    this.running++;
    if (e.attempt === 1) e.queueMs = Date.now() - e.enqueuedAt;

    const embedding = this.embeddings.get(job.image.digest);
    if (e.attempt === 1) this.counts[embedding ? 'embeddingHits' : 'embeddingMisses']++;
    let state: SequenceState | undefined;
    if (job.task === 'chat' || isQuizContinuation(job)) {
      const c = this.conversations.get(job.conversationId);
      const consistent =
        c &&
        (!job.history || job.history.turns.length === c.turns) &&
        (!job.history?.tokens || job.history.tokens.length === c.tokens);
      if (c) this.conversations.delete(job.conversationId); // in flight with the job (or stale)
      if (consistent) state = c.state;
      if (e.attempt === 1) this.counts[state ? 'conversationHits' : 'conversationMisses']++;
    }

    const { port1, port2 } = new MessageChannel();
    e.port = port1;
    port1.on('message', (m: PortMessage) => this.onPortMessage(e, m));
    const task: WorkerTask = { kind: 'job', job, attempt: e.attempt, port: port2, cancel: e.cancel, ...(embedding ? { embedding } : {}), ...(state ? { state } : {}) };
    this.pool
      .run(task, { transferList: [port2, ...stateTransferList(state)] as never })
      .then(
        (resp: WorkerResponse) => this.onResponse(e, resp),
        (err: Error) => this.onWorkerFailure(e, err),
      )
      .catch((err: Error) => this.log.error({ err: err.message, job: job.id }, 'inference client bug'));
  }

  private drainPort(e: Entry): void {
    const p = e.port;
    if (!p) return;
    for (let m = receiveMessageOnPort(p); m; m = receiveMessageOnPort(p)) this.onPortMessage(e, m.message as PortMessage);
    p.close();
    e.port = undefined;
  }

  private onPortMessage(e: Entry, m: PortMessage): void {
    if (m.type === 'embedding') {
      this.embeddings.set(m.digest, m.embedding);
      return;
    }
    if (e.settled) return;
    if (m.type === 'started') this.emit_(e, { type: 'started', worker: m.worker });
    else if (m.type === 'token') this.emit_(e, { type: 'token', text: m.text, ...(m.part ? { part: m.part } : {}), ...(m.round !== undefined ? { round: m.round } : {}) });
  }

  private onResponse(e: Entry, resp: WorkerResponse): void {
    this.drainPort(e);
    this.running--;
    e.phase = 'finished';
    this.workerStats.set(resp.stats.worker, resp.stats);
    if (!resp.ok) this.fail(e, new InferenceError(resp.error.code, resp.error.message, resp.error.retryAfterMs));
    else if ('result' in resp) {
      const expired = e.settled; // timed out: the caller moved on and will not record this turn
      if (!expired) {
        this.conversations.set(e.job.conversationId, {
          state: resp.state,
          turns: resp.turns,
          tokens: resp.state.tokens.length,
        });
      }
      const result: JobResult = { ...resp.result, timings: { ...resp.result.timings, queueMs: e.queueMs } };
      this.succeed(e, result);
    }
    this.pump();
  }

  private onWorkerFailure(e: Entry, err: Error): void {
    this.drainPort(e);
    this.running--;
    if (this.closing) {
      e.phase = 'finished';
      this.fail(e, new InferenceError('unavailable', 'The bot is shutting down; please try again shortly.'));
      return;
    }
    this.log.warn({ job: e.job.id, attempt: e.attempt, err: err.message }, 'inference worker failed during a job');
    if (e.attempt < 2 && !e.settled) {
      e.attempt++;
      this.enqueue(e, true); // its conversation state went down with the worker: rebuilt from history
      this.pump();
      if (e.phase === 'queued') this.announcePositions();
      return;
    }
    e.phase = 'finished';
    this.fail(e, new InferenceError('worker_failed', 'The model worker crashed while answering; please try again.'));
    this.pump();
  }

  private cancel(e: Entry): void {
    if (e.settled) return;
    if (e.phase === 'queued') {
      this.dequeue(e);
      e.phase = 'finished';
      this.fail(e, new InferenceError('cancelled', 'Cancelled.'));
      this.announcePositions();
    } else if (e.phase === 'running') {
      Atomics.store(e.cancel, 0, 1); // stops at the next decode step; resolves with finishReason 'cancelled'
    }
  }

  private expire(e: Entry): void {
    if (e.settled) return;
    if (e.phase === 'queued') {
      this.dequeue(e);
      e.phase = 'finished';
      this.announcePositions();
    } else if (e.phase === 'running') Atomics.store(e.cancel, 0, 2);
    this.fail(e, new InferenceError('timeout', 'The request took too long and was stopped.'));
  }

  private emit_(e: Entry, ev: JobEvent): void {
    try {
      e.onEvent(ev);
    } catch (err) {
      this.log.error({ err: (err as Error).message, job: e.job.id }, 'job event listener threw');
    }
  }

  private succeed(e: Entry, r: JobResult): void {
    if (e.settled) return;
    e.settled = true;
    clearTimeout(e.timer);
    this.emit_(e, { type: 'done', result: r });
    e.resolve(r);
  }

  private fail(e: Entry, err: InferenceError): void {
    if (e.settled) return;
    e.settled = true;
    clearTimeout(e.timer);
    const je: JobError = err.toJSON();
    this.emit_(e, { type: 'error', error: je });
    e.reject(err);
  }
}

/** Starts the pool and waits until every worker has loaded the model. */
export async function createLocalInference(options: LocalInferenceOptions): Promise<LocalInference> {
  const p = new LocalPool(options);
  try {
    await p.ready;
  } catch (err) {
    await p.close().catch(() => {});
    throw err;
  }
  return p;
}
