/**
 * `curio worker`: loads the model into a local pool and consumes the Redis queue until SIGINT or
 * SIGTERM, then finishes the running jobs and exits.
 */
import * as os from 'node:os';

import type { Config } from '../../config';
import { createLogger, localInferenceOptions } from '../../app';
import { createLocalInference } from '../local';
import { startRemoteWorker, type RemoteWorker } from './worker';

export interface ServeWorkerOptions {
  hostId?: string;
  concurrency?: number;
}

/** Per-worker jobs in flight in the local pool (its default). */
const TASKS_PER_WORKER = 4;

export async function serveWorker(config: Config, o: ServeWorkerOptions = {}): Promise<RemoteWorker> {
  if (!config.redis.url) throw new Error('curio worker needs redis.url (or REDIS_URL): the queue it takes jobs from.');
  const logger = createLogger(config.log.level);
  const hostId = o.hostId || config.worker.host_id || os.hostname();
  // Jobs come from two queues (shared + own): room for both in the pool's queue.
  const pool = await createLocalInference(
    localInferenceOptions(config, logger, { host: hostId, concurrentTasksPerWorker: TASKS_PER_WORKER, maxQueue: Math.max(config.inference.max_queue, 64) }),
  );
  const concurrency = o.concurrency ?? pool.sizing.workers * TASKS_PER_WORKER;
  const worker = await startRemoteWorker({
    redisUrl: config.redis.url,
    prefix: config.redis.prefix,
    inference: pool,
    hostId,
    concurrency,
    lockDurationMs: config.worker.lock_s * 1000,
    stalledIntervalMs: config.worker.stalled_check_s * 1000,
    heartbeatMs: config.worker.heartbeat_s * 1000,
    ttlMs: config.conversations.idle_ttl_minutes * 60_000,
    closeInference: true,
    logger,
  });
  logger.info({ host: hostId, concurrency, model: pool.info.name, device: pool.info.device }, 'curio worker ready');
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, running: worker.running() }, 'curio worker stopping: finishing running jobs');
    worker.close().finally(() => process.exit(0));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  return worker;
}
