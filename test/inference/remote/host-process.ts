/**
 * A worker host in a child process (what `curio worker` runs), for the kill test. Env:
 * REDIS_URL, HOST_ID, SLOW_MS (per token), LOCK_MS, STALLED_MS, HEARTBEAT_MS. Prints "ready".
 */
import { createLocalInference } from '../../../src/inference';
import { startRemoteWorker } from '../../../src/inference/remote';
import { BUNDLE, slowed } from './helpers';

async function main(): Promise<void> {
  const e = process.env;
  const pool = await createLocalInference({ bundleDir: BUNDLE, workers: 1, intraOpNumThreads: 1, concurrentTasksPerWorker: 4, maxQueue: 64, host: e.HOST_ID });
  const inference = Number(e.SLOW_MS) > 0 ? slowed(pool, Number(e.SLOW_MS)) : pool;
  const w = await startRemoteWorker({
    redisUrl: e.REDIS_URL!,
    inference,
    hostId: e.HOST_ID!,
    concurrency: 4,
    lockDurationMs: Number(e.LOCK_MS ?? 10000),
    stalledIntervalMs: Number(e.STALLED_MS ?? 5000),
    heartbeatMs: Number(e.HEARTBEAT_MS ?? 2000),
    closeInference: true,
  });
  process.stdout.write('ready\n');
  process.on('SIGTERM', () => void w.close().then(() => process.exit(0)));
}

void main();
