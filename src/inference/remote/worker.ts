/**
 * `curio worker`: a GPU host's side of the Redis queue. It consumes the shared BullMQ queue and
 * its own host queue into its local pool, and streams each job's events back on the job's Redis
 * Stream (client.ts reads them).
 *
 * - Concurrency per queue = the local pool's capacity, so the pool always has work in hand; a
 *   job beyond capacity waits in the pool's own queue (sized to hold both queues' share).
 * - Locks: BullMQ renews each active job's lock every lockDuration/2 from this process's event
 *   loop (inference runs in worker threads, so the loop stays free). A killed host stops
 *   renewing; any live host's stalled-job check moves the job back to waiting after about
 *   lockDuration + stalledInterval, and it runs again (attempt + 1, rebuilt from history).
 * - Heartbeat: <prefix>:host:<id> with a TTL of 3 beats. Bots route follow-ups to this host's
 *   queue only while it is alive. A janitor on every host moves the jobs of a dead host's queue
 *   to the shared queue, so nothing waits forever on a host that is gone.
 * - Errors the user should see (bad_image, timeout, cancelled...) end the job normally with an
 *   'error' event; only a crash of the host (or of its whole pool) makes BullMQ retry it.
 * - close(): stops taking jobs, waits for the running ones, drops the heartbeat (follow-ups go to
 *   the shared queue at once), and leaves the pool to its owner unless `closeInference`.
 */
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';

import { InferenceClient, InferenceError, JobEvent, RunHandle } from '../types';
import { bullId, hostQueue, Keys, QueuedJob, SHARED_QUEUE } from './keys';

export interface RemoteWorkerLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RemoteWorkerOptions {
  redisUrl: string;
  /** Key prefix (config redis.prefix; default 'curio'). */
  prefix?: string;
  /** The local pool the jobs run on. */
  inference: InferenceClient;
  /** Jobs taken from each queue at once (default 4: the pool's capacity). */
  concurrency?: number;
  /** This host's id (affinity, heartbeat); the pool's worker labels should start with it. */
  hostId: string;
  /** BullMQ lock duration (default 10 s): a killed host's jobs run again after about this long. */
  lockDurationMs?: number;
  /** Stalled-job check interval (default 5 s). */
  stalledIntervalMs?: number;
  /** Heartbeat period (default 2 s; dead after 3 missed). */
  heartbeatMs?: number;
  /** How long events, attempts and affinity are kept (default 1 h). */
  ttlMs?: number;
  /** Close the pool in close() (the CLI does; tests share pools). */
  closeInference?: boolean;
  logger?: RemoteWorkerLogger;
}

export interface RemoteWorker {
  readonly hostId: string;
  /** Jobs running here now. */
  running(): number;
  close(): Promise<void>;
}

const silent: RemoteWorkerLogger = { info() {}, warn() {}, error() {} };

export async function startRemoteWorker(o: RemoteWorkerOptions): Promise<RemoteWorker> {
  const log = o.logger ?? silent;
  const keys = new Keys(o.prefix ?? 'curio');
  const ttlMs = o.ttlMs ?? 3600_000;
  const heartbeatMs = o.heartbeatMs ?? 2000;
  const concurrency = o.concurrency ?? 4;
  const hostId = o.hostId;
  const retryStrategy = (times: number) => Math.min(100 * times, 1000);
  const cmd = new Redis(o.redisUrl, { maxRetriesPerRequest: null, enableAutoPipelining: true, retryStrategy });
  const sub = new Redis(o.redisUrl, { maxRetriesPerRequest: null, retryStrategy });
  const bullConn = new Redis(o.redisUrl, { maxRetriesPerRequest: null, retryStrategy });
  for (const c of [cmd, sub, bullConn]) c.on('error', (err) => log.warn({ err: err.message, host: hostId }, 'redis connection error (worker)'));

  const handles = new Map<string, RunHandle>();
  let closing = false;

  // ---- cancellation: pub/sub for running jobs, the key for jobs not yet started ----
  await sub.subscribe(keys.cancelChannel);
  sub.on('message', (_channel: string, jobId: string) => handles.get(jobId)?.cancel());

  // ---- heartbeat and janitor ----
  const beat = async () => {
    if (closing) return;
    await cmd
      .multi()
      .set(keys.heartbeat(hostId), JSON.stringify({ pid: process.pid, concurrency, at: Date.now() }), 'PX', heartbeatMs * 3)
      .sadd(keys.hosts, hostId)
      .exec();
  };
  await beat();
  const rescueQueues = new Map<string, Queue>();
  const shared = new Queue(SHARED_QUEUE, { connection: bullConn, prefix: keys.prefix });
  const janitor = async () => {
    for (const other of await cmd.smembers(keys.hosts)) {
      if (other === hostId || closing) continue;
      if (await cmd.exists(keys.heartbeat(other))) continue;
      const name = hostQueue(other);
      let q = rescueQueues.get(name);
      if (!q) rescueQueues.set(name, (q = new Queue(name, { connection: bullConn, prefix: keys.prefix })));
      const moved = await rescueHostQueue(q, shared, cmd, keys, ttlMs);
      if (moved > 0) log.warn({ host: hostId, deadHost: other, moved }, 'moved a dead host’s jobs to the shared queue');
      const left = await q.getJobCountByTypes('wait', 'prioritized', 'active');
      if (left === 0) await cmd.srem(keys.hosts, other);
    }
  };
  let ticks = 0;
  const timer = setInterval(() => {
    beat().catch(() => {});
    if (ticks++ % 2 === 1) janitor().catch((err) => log.warn({ err: (err as Error).message }, 'janitor failed'));
  }, heartbeatMs);
  timer.unref();

  // ---- one job ----
  const processJob = async (bj: Job<QueuedJob>): Promise<{ ok: boolean }> => {
    const { job, image } = bj.data;
    const stream = keys.events(job.id);
    const attempt = await cmd.incr(keys.attempt(job.id));
    await cmd.pexpire(keys.attempt(job.id), ttlMs);
    let last: Promise<unknown> = Promise.resolve();
    // Tokens carry their index within this attempt, so a bot that re-reads the stream (after a
    // retry, or a Redis restart that lost the attempt counter) skips what it already passed on.
    let tokens = 0;
    const emit = (ev: JobEvent) => {
      const index = ev.type === 'token' ? ['n', String(tokens++)] : [];
      last = cmd.xadd(stream, 'MAXLEN', '~', '100000', '*', 'a', String(attempt), ...index, 'e', JSON.stringify(ev)).catch((err) => {
        log.warn({ err: (err as Error).message, job: job.id }, 'could not stream an event');
      });
    };
    const finish = async (ev: JobEvent) => {
      emit(ev);
      await last;
      await cmd.pexpire(stream, ttlMs);
    };

    const cancelled = await cmd.get(keys.cancel(job.id));
    if (cancelled) {
      const err = cancelled === '2' ? new InferenceError('timeout', 'The request took too long and was stopped.') : new InferenceError('cancelled', 'Cancelled.');
      await finish({ type: 'error', error: err.toJSON() });
      return { ok: false };
    }
    // Always look for the bytes (stored by whichever bot first sent this image): a follow-up
    // that lands on a host without the embedding still finds its image.
    let bytes: Uint8Array | undefined;
    const buf = await cmd.getBuffer(keys.image(job.image.digest));
    if (buf) bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    else if (image) log.warn({ job: job.id, digest: job.image.digest }, 'image bytes expired from Redis');
    const handle = o.inference.run({ ...job, image: bytes ? { digest: job.image.digest, bytes } : { digest: job.image.digest } }, (ev) => {
      if (ev.type === 'started') emit({ type: 'started', worker: ev.worker });
      else if (ev.type === 'token') emit(ev);
    });
    handles.set(job.id, handle);
    try {
      const result = await handle.result;
      await cmd.set(keys.affinity(job.conversationId), hostId, 'PX', ttlMs);
      await finish({ type: 'done', result });
      return { ok: true };
    } catch (e) {
      const err = e instanceof InferenceError ? e : new InferenceError('internal', 'Something went wrong while answering.');
      if (err.code === 'busy' || (err.code === 'unavailable' && !closing)) {
        // The pool refused or is gone: not the job's fault. Let BullMQ hand it to someone else.
        await last;
        throw new Error(`local pool: ${err.code}`);
      }
      await finish({ type: 'error', error: err.toJSON() });
      return { ok: false };
    } finally {
      handles.delete(job.id);
    }
  };

  const workerOpts = {
    connection: bullConn,
    prefix: keys.prefix,
    concurrency,
    lockDuration: o.lockDurationMs ?? 10_000,
    stalledInterval: o.stalledIntervalMs ?? 5_000,
    maxStalledCount: 2,
    // After a lost Redis connection, look for work again within a second (BullMQ waits 15 s).
    runRetryDelay: 1000,
    // Removed once done: the result travelled on the event stream.
    removeOnComplete: { count: 0 },
    removeOnFail: { age: ttlMs / 1000, count: 10_000 },
  };
  const workers = [new Worker<QueuedJob>(SHARED_QUEUE, processJob, workerOpts), new Worker<QueuedJob>(hostQueue(hostId), processJob, workerOpts)];
  for (const w of workers) {
    w.on('error', (err) => log.warn({ err: err.message, host: hostId }, 'queue worker error'));
    w.on('failed', (job, err) => {
      if (!job) return;
      log.warn({ job: job.data.job.id, err: err.message, attempts: job.attemptsMade }, 'queued job failed');
      // Out of retries: tell the bot (it also notices the failed state by itself).
      if (job.attemptsMade >= (job.opts.attempts ?? 1)) {
        const ev: JobEvent = { type: 'error', error: { code: 'worker_failed', message: 'The model worker failed while answering; please try again.' } };
        cmd.xadd(keys.events(job.data.job.id), '*', 'a', '0', 'e', JSON.stringify(ev)).catch(() => {});
      }
    });
  }
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  log.info({ host: hostId, concurrency }, 'remote worker consuming jobs');

  return {
    hostId,
    running: () => handles.size,
    async close() {
      if (closing) return;
      closing = true;
      clearInterval(timer);
      await Promise.all(workers.map((w) => w.close())); // waits for running jobs
      await cmd.del(keys.heartbeat(hostId)).catch(() => {});
      await Promise.all([...rescueQueues.values(), shared].map((q) => q.close()));
      if (o.closeInference) await o.inference.close();
      await Promise.all([cmd, sub, bullConn].map((c) => c.quit().catch(() => c.disconnect())));
    },
  };
}

/**
 * Moves the jobs of a dead host's queue to the shared queue: waiting ones, and active ones whose
 * lock has expired (the host died while running them). A job still locked is left alone (its
 * host is alive after all, or its lock has not expired yet: the next round takes it).
 */
export async function rescueHostQueue(from: Queue<QueuedJob>, to: Queue<QueuedJob>, redis: Redis, keys: Keys, ttlMs: number): Promise<number> {
  let moved = 0;
  const jobs = await from.getJobs(['wait', 'prioritized', 'active']);
  for (const j of jobs) {
    if (!j?.id) continue;
    const data = j.data;
    let removed = false;
    try {
      removed = (await from.remove(j.id)) === 1;
    } catch {
      removed = false;
    }
    if (!removed) continue;
    await to.add(data.job.task, data, { ...j.opts, jobId: bullId(data.job.id) });
    await redis.set(keys.route(data.job.id), to.name, 'PX', ttlMs);
    moved++;
  }
  return moved;
}
