/**
 * The bot side of scale-out: an InferenceClient that only enqueues. Jobs go into a BullMQ queue
 * in Redis; `curio worker` hosts (worker.ts) run them and stream their events back on a Redis
 * Stream per job, which this client reads with one blocking XREAD over all its jobs.
 *
 * - Priorities: interactive = 1, batch = 10 (BullMQ: lower runs first; FIFO within one).
 * - Bounded: a job is refused with 'busy' when its queue already holds `maxQueue` waiting jobs.
 *   Admission is serialised within this process (count + add), so it is exact for one bot and
 *   approximate across several.
 * - Queue position: the job's rank in its queue's priority set (ZRANK), polled every `pollMs`.
 *   Exact within the queue; jobs in host queues are not counted against shared ones (approximate).
 * - Affinity: a follow-up (a job with `history`) goes to the queue of the host that last ran the
 *   conversation (<prefix>:affinity:<conv>) while that host's heartbeat is alive, else to the
 *   shared queue (the host that takes it rebuilds the state from history.tokens).
 * - Restarts: the BullMQ job id is derived from the job id, and events are a stream, not
 *   pub/sub, so a restarted bot calling run() with the same job (or attach(jobId)) re-attaches
 *   and replays what it missed. A job that was retried after its host died streams its tokens
 *   again; the replayed prefix is skipped so listeners see each token once.
 * - Watchdog (every `pollMs`): reports positions, settles jobs that BullMQ failed without an
 *   event, and resubmits a job that vanished from Redis (a Redis restart without persistence).
 * - Redis away: new jobs are refused at once with 'unavailable'; jobs in flight keep waiting (up
 *   to their deadline) and resume when Redis is back.
 * - close() detaches: in-flight calls end with 'unavailable', the jobs themselves keep running.
 */
import { randomUUID } from 'node:crypto';

import { Queue } from 'bullmq';
import { Redis } from 'ioredis';

import { InferenceClient, InferenceError, InferenceJob, InferenceStats, JobError, JobEvent, JobResult, RunHandle } from '../types';
import { bullId, hostQueue, Keys, PRIORITY, QueuedJob, SHARED_QUEUE } from './keys';

export interface RemoteInferenceLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RemoteInferenceOptions {
  redisUrl: string;
  prefix?: string;
  /** Waiting jobs beyond which new ones are refused with 'busy' (default 32). */
  maxQueue?: number;
  /** Deadline for jobs that carry none (ms from submission; default none). */
  jobTimeoutMs?: number;
  /** Watchdog / position period (default 1000 ms). */
  pollMs?: number;
  /** TTL of image bytes and job bookkeeping in Redis (default 1 h). */
  ttlMs?: number;
  /** A call that cannot be admitted within this time fails with 'unavailable' (default 5 s). */
  admitTimeoutMs?: number;
  logger?: RemoteInferenceLogger;
}

export interface RemoteInference extends InferenceClient {
  /** Re-attach to a job by id (after a restart) without its data: replays its events. */
  attach(jobId: string, onEvent: (event: JobEvent) => void): RunHandle;
  /** Host ids with a live heartbeat. */
  hosts(): Promise<string[]>;
}

type TokenEvent = Extract<JobEvent, { type: 'token' }>;

interface Flight {
  id: string;
  /** Present when run() had the job: lets the watchdog resubmit it if Redis lost it. */
  job?: InferenceJob;
  onEvent: (ev: JobEvent) => void;
  resolve: (r: JobResult) => void;
  reject: (e: InferenceError) => void;
  settled: boolean;
  admitted: boolean;
  queue: string;
  lastId: string;
  attempt: number;
  started: boolean;
  /** Tokens passed on so far; a retried attempt's identical prefix is skipped. */
  forwarded: TokenEvent[];
  replay: number;
  lastPosition: number;
  missing: number;
  failedSeen: boolean;
  timer?: NodeJS.Timeout;
}

const silent: RemoteInferenceLogger = { info() {}, warn() {}, error() {} };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class RemoteClient implements RemoteInference {
  private readonly keys: Keys;
  private readonly cmd: Redis;
  private readonly reader: Redis;
  private readonly queues = new Map<string, Queue<QueuedJob>>();
  private readonly flights = new Map<string, Flight>();
  private readonly log: RemoteInferenceLogger;
  private readonly maxQueue: number;
  private readonly ttlMs: number;
  private closed = false;
  private admission: Promise<unknown> = Promise.resolve();
  private readonly wakeKey: string;
  private wakeRequested = false;
  private readonly loop: Promise<void>;
  private readonly watchdog: NodeJS.Timeout;
  private watchdogBusy = false;
  private counts = { admitted: 0, busy: 0, resubmitted: 0 };

  constructor(private readonly o: RemoteInferenceOptions) {
    this.log = o.logger ?? silent;
    this.keys = new Keys(o.prefix ?? 'curio');
    this.maxQueue = o.maxQueue ?? 32;
    this.ttlMs = o.ttlMs ?? 3600_000;
    // Reconnect quickly (at most 1 s apart): jobs in flight resume as soon as Redis is back.
    const retryStrategy = (times: number) => Math.min(100 * times, 1000);
    this.cmd = new Redis(o.redisUrl, { maxRetriesPerRequest: null, enableAutoPipelining: true, retryStrategy });
    this.reader = new Redis(o.redisUrl, { maxRetriesPerRequest: null, retryStrategy });
    this.cmd.on('error', (err) => this.log.warn({ err: err.message }, 'redis connection error (inference client)'));
    this.reader.on('error', () => {});
    this.wakeKey = `${this.keys.prefix}:wake:${randomUUID()}`;
    this.loop = this.readLoop();
    this.watchdog = setInterval(() => void this.tick(), o.pollMs ?? 1000);
    this.watchdog.unref();
  }

  private queue(name: string): Queue<QueuedJob> {
    let q = this.queues.get(name);
    if (!q) {
      q = new Queue<QueuedJob>(name, { connection: this.cmd, prefix: this.keys.prefix });
      q.on('error', () => {});
      this.queues.set(name, q);
    }
    return q;
  }

  // ---- public API ------------------------------------------------------------------------

  run(job: InferenceJob, onEvent: (event: JobEvent) => void): RunHandle {
    if (job.deadline === undefined && this.o.jobTimeoutMs) job = { ...job, deadline: Date.now() + this.o.jobTimeoutMs };
    const { f, handle } = this.track(job.id, onEvent, job);
    if (f.settled) return handle;
    this.admission = this.admission.then(() => this.admit(f, job)).catch(() => {});
    return handle;
  }

  attach(jobId: string, onEvent: (event: JobEvent) => void): RunHandle {
    const { f, handle } = this.track(jobId, onEvent);
    if (f.settled) return handle;
    this.cmd
      .get(this.keys.route(jobId))
      .then((q) => {
        if (!q) return this.fail(f, new InferenceError('unavailable', 'That request is no longer known; please try again.'));
        f.queue = q;
        f.admitted = true;
        this.wakeReader();
      })
      .catch(() => this.fail(f, new InferenceError('unavailable', 'The job queue is unreachable; please try again shortly.')));
    return handle;
  }

  async hosts(): Promise<string[]> {
    const ids = await this.cmd.smembers(this.keys.hosts);
    const alive = await Promise.all(ids.map((h) => this.cmd.exists(this.keys.heartbeat(h))));
    return ids.filter((_, i) => alive[i] === 1);
  }

  stats(): InferenceStats {
    let queued = 0;
    let running = 0;
    for (const f of this.flights.values()) {
      if (f.started) running++;
      else queued++;
    }
    return {
      queued,
      running,
      workers: 0,
      workerRestarts: 0,
      cache: { embeddingHits: 0, embeddingMisses: 0, conversationHits: 0, conversationMisses: 0 },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    for (const f of [...this.flights.values()]) this.fail(f, new InferenceError('unavailable', 'The bot is restarting; please try again shortly.'));
    await this.admission;
    this.reader.disconnect();
    await this.loop.catch(() => {});
    await Promise.all([...this.queues.values()].map((q) => q.close().catch(() => {})));
    await this.cmd.unlink(this.wakeKey).catch(() => {});
    await this.cmd.quit().catch(() => this.cmd.disconnect());
  }

  // ---- admission -------------------------------------------------------------------------

  private track(id: string, onEvent: (ev: JobEvent) => void, job?: InferenceJob): { f: Flight; handle: RunHandle } {
    let resolve!: (r: JobResult) => void;
    let reject!: (e: InferenceError) => void;
    const result = new Promise<JobResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    result.catch(() => {});
    const f: Flight = {
      id,
      job,
      onEvent,
      resolve,
      reject,
      settled: false,
      admitted: false,
      queue: SHARED_QUEUE,
      lastId: '0',
      attempt: 0,
      started: false,
      forwarded: [],
      replay: 0,
      lastPosition: 0,
      missing: 0,
      failedSeen: false,
    };
    const handle: RunHandle = { result, cancel: () => this.cancel(f) };
    if (this.closed) {
      this.fail(f, new InferenceError('unavailable', 'The bot is shutting down; please try again shortly.'));
      return { f, handle };
    }
    if (this.flights.has(id)) {
      this.fail(f, new InferenceError('bad_request', 'That request is already running.'));
      return { f, handle };
    }
    if (job?.deadline !== undefined) {
      const ms = job.deadline - Date.now();
      if (ms <= 0) {
        this.fail(f, new InferenceError('timeout', 'The request timed out before it could start.'));
        return { f, handle };
      }
      f.timer = setTimeout(() => this.expire(f), ms);
      f.timer.unref();
    }
    this.flights.set(id, f);
    return { f, handle };
  }

  private async admit(f: Flight, job: InferenceJob): Promise<void> {
    if (f.settled) return;
    const timeout = this.o.admitTimeoutMs ?? 5000;
    if (this.cmd.status !== 'ready' && this.cmd.status !== 'connecting' && this.cmd.status !== 'wait') {
      // Connection lost: ride out a blip (up to 1 s), else answer at once rather than hang.
      const ready = await new Promise<boolean>((resolve) => {
        const t = setTimeout(() => resolve(false), Math.min(1000, timeout));
        this.cmd.once('ready', () => {
          clearTimeout(t);
          resolve(true);
        });
      });
      if (!ready) return this.fail(f, new InferenceError('unavailable', 'The job queue is unreachable; please try again shortly.', 5000));
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.enqueue(f, job),
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(new InferenceError('unavailable', 'The job queue is unreachable; please try again shortly.', 5000)), timeout);
        }),
      ]);
    } catch (e) {
      this.fail(f, e instanceof InferenceError ? e : new InferenceError('unavailable', 'The job queue is unreachable; please try again shortly.', 5000));
    } finally {
      clearTimeout(timer);
    }
  }

  private async enqueue(f: Flight, job: InferenceJob, resubmit = false): Promise<void> {
    const k = this.keys;
    // Re-attach: a job with this id is already queued (a bot restart), so follow it.
    const known = resubmit ? null : await this.cmd.get(k.route(job.id));
    if (known) {
      f.queue = known;
      f.admitted = true;
      this.wakeReader();
      return;
    }
    let target = SHARED_QUEUE;
    if (job.history) {
      const host = await this.cmd.get(k.affinity(job.conversationId));
      if (host && (await this.cmd.exists(k.heartbeat(host)))) target = hostQueue(host);
    }
    const q = this.queue(target);
    if (!resubmit) {
      const waiting = await q.getJobCountByTypes('wait', 'prioritized');
      const sharedWaiting = target === SHARED_QUEUE ? 0 : await this.queue(SHARED_QUEUE).getJobCountByTypes('wait', 'prioritized');
      if (waiting + sharedWaiting >= this.maxQueue) {
        this.counts.busy++;
        throw new InferenceError('busy', 'The model is busy; please try again in a moment.', 2000 + 250 * waiting);
      }
    }
    if (f.settled) return;
    const bytes = job.image.bytes;
    if (bytes) await this.cmd.set(k.image(job.image.digest), Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), 'PX', this.ttlMs);
    const data: QueuedJob = { job: { ...job, image: { digest: job.image.digest } }, image: !!bytes, ...(resubmit ? { resubmits: 1 } : {}) };
    await this.cmd.set(k.route(job.id), target, 'PX', this.ttlMs);
    await q.add(job.task, data, { jobId: bullId(job.id), priority: PRIORITY[job.priority] ?? PRIORITY.interactive, removeOnComplete: true, removeOnFail: { age: this.ttlMs / 1000 }, attempts: 3, backoff: { type: 'fixed', delay: 1000 } });
    f.queue = target;
    f.admitted = true;
    this.counts.admitted++;
    this.wakeReader();
  }

  // ---- events ----------------------------------------------------------------------------

  /** Race-free wake-up of the blocking XREAD: it also reads this client's own wake stream. */
  private wakeReader(): void {
    if (this.wakeRequested || this.closed) return;
    this.wakeRequested = true;
    this.cmd
      .multi()
      .xadd(this.wakeKey, 'MAXLEN', '1', '*', 'w', '1')
      .pexpire(this.wakeKey, 600_000)
      .exec()
      .catch(() => {});
  }

  private async readLoop(): Promise<void> {
    let wakeId = '0'; // a fresh key: every entry is a wake-up
    while (!this.closed) {
      const active = [...this.flights.values()].filter((f) => f.admitted && !f.settled);
      let res: Array<[string, Array<[string, string[]]>]> | null;
      try {
        this.wakeRequested = false;
        const keys = [this.wakeKey, ...active.map((f) => this.keys.events(f.id))];
        const ids = [wakeId, ...active.map((f) => f.lastId)];
        res = (await this.reader.xread('COUNT', 500, 'BLOCK', 5000, 'STREAMS', ...keys, ...ids)) as typeof res;
      } catch {
        if (this.closed) return;
        await sleep(250);
        continue;
      }
      if (!res) continue;
      const prefix = this.keys.events('');
      for (const [key, entries] of res) {
        if (key === this.wakeKey) {
          wakeId = entries[entries.length - 1]?.[0] ?? wakeId;
          continue;
        }
        const f = this.flights.get(key.slice(prefix.length));
        if (!f) continue;
        for (const [id, fields] of entries) {
          f.lastId = id;
          const rec: Record<string, string> = {};
          for (let i = 0; i + 1 < fields.length; i += 2) rec[fields[i]] = fields[i + 1];
          try {
            this.onStreamEvent(f, Number(rec.a ?? 0), JSON.parse(rec.e) as JobEvent, rec.n === undefined ? undefined : Number(rec.n));
          } catch (err) {
            this.log.error({ err: (err as Error).message, job: f.id }, 'bad event on a job stream');
          }
        }
      }
    }
  }

  /** `index`: the token's position within its attempt (absent on other events). */
  private onStreamEvent(f: Flight, attempt: number, ev: JobEvent, index?: number): void {
    if (f.settled) return;
    if (attempt > f.attempt) {
      f.attempt = attempt;
      f.replay = 0; // a retry streams from the beginning again
    }
    switch (ev.type) {
      case 'started':
        if (!f.started) {
          f.started = true;
          this.emit(f, ev);
        }
        break;
      case 'token': {
        if (index !== undefined) {
          // Every attempt streams from its first token: pass on only what goes beyond what the
          // listener already has, whatever the attempt counter says.
          if (index < f.forwarded.length) break;
          f.forwarded.push(ev);
          f.replay = f.forwarded.length;
          this.emit(f, ev);
          break;
        }
        const prev = f.forwarded[f.replay];
        f.replay++;
        if (prev && prev.text === ev.text && prev.part === ev.part && prev.round === ev.round) break; // already seen
        f.forwarded.push(ev);
        f.replay = f.forwarded.length;
        this.emit(f, ev);
        break;
      }
      case 'done':
        this.succeed(f, ev.result);
        break;
      case 'error':
        this.fail(f, new InferenceError(ev.error.code, ev.error.message, ev.error.retryAfterMs));
        break;
      default:
        break;
    }
  }

  // ---- watchdog: positions, failures BullMQ recorded without an event, lost jobs -----------

  private async tick(): Promise<void> {
    if (this.watchdogBusy || this.closed || this.cmd.status !== 'ready') return;
    const flights = [...this.flights.values()].filter((f) => f.admitted && !f.settled);
    if (flights.length === 0) return;
    this.watchdogBusy = true;
    try {
      const k = this.keys;
      const routes = await Promise.all(flights.map((f) => this.cmd.get(k.route(f.id))));
      routes.forEach((r, i) => {
        if (r) flights[i].queue = r;
      });
      const p = this.cmd.pipeline();
      for (const f of flights) {
        const id = bullId(f.id);
        p.zrank(k.queueKey(f.queue, 'prioritized'), id);
        p.exists(k.queueKey(f.queue, id));
        p.zscore(k.queueKey(f.queue, 'failed'), id);
        p.exists(k.events(f.id));
      }
      const out = (await p.exec()) ?? [];
      flights.forEach((f, i) => {
        const [rank, exists, failed, hasEvents] = out.slice(i * 4, i * 4 + 4).map((r) => r[1]) as [number | null, number, string | null, number];
        if (f.settled) return;
        if (rank !== null && rank !== undefined && !f.started) {
          const pos = rank + 1;
          if (pos !== f.lastPosition) {
            f.lastPosition = pos;
            this.emit(f, { type: 'queued', position: pos });
          }
        }
        if (failed !== null && failed !== undefined) {
          // Give the stream one more round to deliver the host's own error event.
          if (f.failedSeen) this.fail(f, new InferenceError('worker_failed', 'The model worker failed while answering; please try again.'));
          f.failedSeen = true;
          return;
        }
        if (!exists && !hasEvents) {
          // Neither queued nor answered: Redis lost it (restarted without persistence), or a
          // dead host's job is being moved right now. Two rounds in a row: submit it again.
          if (++f.missing >= 2) void this.resubmit(f);
        } else f.missing = 0;
      });
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'inference watchdog round failed');
    } finally {
      this.watchdogBusy = false;
    }
  }

  private async resubmit(f: Flight): Promise<void> {
    f.missing = 0;
    if (!f.job) return this.fail(f, new InferenceError('unavailable', 'The request was lost; please try again.'));
    if (f.job.image.bytes === undefined) {
      const has = await this.cmd.exists(this.keys.image(f.job.image.digest));
      if (!has && !f.job.history) return this.fail(f, new InferenceError('unavailable', 'The request was lost; please try again.'));
    }
    this.counts.resubmitted++;
    this.log.warn({ job: f.id }, 'job vanished from Redis; submitting it again');
    await this.enqueue(f, f.job, true).catch((err) => this.log.warn({ err: (err as Error).message, job: f.id }, 'resubmit failed'));
  }

  // ---- endings ---------------------------------------------------------------------------

  private cancel(f: Flight, code: '1' | '2' = '1'): void {
    if (f.settled) return;
    const k = this.keys;
    this.cmd
      .multi()
      .set(k.cancel(f.id), code, 'PX', this.ttlMs)
      .publish(k.cancelChannel, f.id)
      .exec()
      .then(() => (f.admitted ? this.queue(f.queue).remove(bullId(f.id)) : 0))
      .then((removed) => {
        // Still waiting: it leaves the queue. Running: the host stops it and reports.
        if (removed === 1 || !f.admitted) {
          if (code === '1') this.fail(f, new InferenceError('cancelled', 'Cancelled.'));
          void this.cleanup(f.id);
        }
      })
      .catch(() => {
        if (code === '1') this.fail(f, new InferenceError('cancelled', 'Cancelled.'));
      });
  }

  private expire(f: Flight): void {
    if (f.settled) return;
    this.cancel(f, '2');
    this.fail(f, new InferenceError('timeout', 'The request took too long and was stopped.'));
  }

  private emit(f: Flight, ev: JobEvent): void {
    try {
      f.onEvent(ev);
    } catch (err) {
      this.log.error({ err: (err as Error).message, job: f.id }, 'job event listener threw');
    }
  }

  private finish(f: Flight): void {
    f.settled = true;
    clearTimeout(f.timer);
    if (this.flights.get(f.id) === f) this.flights.delete(f.id);
  }

  /** The answer has been read: the job's bookkeeping can go (the image stays for follow-ups). */
  private async cleanup(id: string): Promise<void> {
    if (this.closed) return;
    const k = this.keys;
    await this.cmd.unlink(k.events(id), k.route(id), k.attempt(id), k.cancel(id)).catch(() => {});
  }

  private succeed(f: Flight, r: JobResult): void {
    if (f.settled) return;
    this.finish(f);
    void this.cleanup(f.id);
    this.emit(f, { type: 'done', result: r });
    f.resolve(r);
  }

  private fail(f: Flight, err: InferenceError): void {
    if (f.settled) return;
    const ownsEntry = this.flights.get(f.id) === f;
    this.finish(f);
    // A terminal answer from the host (or a refusal before admission) ends the job's bookkeeping;
    // a local timeout/close leaves it for the host to finish and a restarted bot to re-attach.
    if (ownsEntry && f.admitted && err.code !== 'unavailable' && err.code !== 'timeout') void this.cleanup(f.id);
    const je: JobError = err.toJSON();
    this.emit(f, { type: 'error', error: je });
    f.reject(err);
  }
}

/** Connects the bot-side queue client (Redis connects in the background; no model is loaded). */
export function createRemoteInference(options: RemoteInferenceOptions): RemoteInference {
  return new RemoteClient(options);
}
