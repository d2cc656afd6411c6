/**
 * The Redis queue path (bot-side client → BullMQ → `curio worker` host → local pool → event
 * stream) against a real redis-server and the golden tiny bundle.
 */
import type { Redis } from 'ioredis';

import { createLocalInference, InferenceError, LocalInference } from '../../../src/inference';
import { createRemoteInference, RemoteInference, RemoteWorker, startRemoteWorker } from '../../../src/inference/remote';
import { startRedis, TestRedis } from '../../support/redis';
import { BUNDLE, collect, DIGEST, IMAGE, job, N, sleep, slowed, streamed, until } from './helpers';

jest.setTimeout(60000);

describe('remote inference over Redis', () => {
  let redis: TestRedis;
  let r: Redis;
  let poolA: LocalInference;
  let poolB: LocalInference;
  const clients: RemoteInference[] = [];
  const workers: RemoteWorker[] = [];
  const client = (o: Partial<Parameters<typeof createRemoteInference>[0]> = {}) => {
    const c = createRemoteInference({ redisUrl: redis.url, pollMs: 200, ...o });
    clients.push(c);
    return c;
  };
  const host = async (hostId: string, pool: LocalInference | ReturnType<typeof slowed>, o: Partial<Parameters<typeof startRemoteWorker>[0]> = {}) => {
    const w = await startRemoteWorker({ redisUrl: redis.url, inference: pool, hostId, concurrency: 4, heartbeatMs: 300, lockDurationMs: 2000, stalledIntervalMs: 1000, ...o });
    workers.push(w);
    return w;
  };
  const closeAll = async () => {
    await Promise.all(workers.splice(0).map((w) => w.close()));
    await Promise.all(clients.splice(0).map((c) => c.close()));
  };

  beforeAll(async () => {
    redis = await startRedis();
    r = redis.client();
    [poolA, poolB] = await Promise.all([
      createLocalInference({ bundleDir: BUNDLE, workers: 1, intraOpNumThreads: 1, concurrentTasksPerWorker: 4, maxQueue: 256, host: 'hA' }),
      createLocalInference({ bundleDir: BUNDLE, workers: 1, intraOpNumThreads: 1, concurrentTasksPerWorker: 4, maxQueue: 256, host: 'hB' }),
    ]);
  });
  afterEach(closeAll);
  afterAll(async () => {
    await closeAll();
    await Promise.all([poolA?.close(), poolB?.close()]);
    await redis?.stop();
  });

  it('runs a job on a worker host and streams its tokens back, same answer as the local pool', async () => {
    await host('hA', poolA);
    const c = client();
    const j = job({ task: 'describe', detail: 'brief' });
    const t0 = performance.now();
    const { events, result } = collect(c, j);
    const res = await result;
    const ms = performance.now() - t0;
    expect(events[0]).toEqual({ type: 'started', worker: 'hA/w0' });
    expect(events.at(-1)).toEqual({ type: 'done', result: res });
    expect(streamed(events).trim()).toBe(res.text);
    expect(res).toMatchObject({ task: 'describe', finishReason: 'length', tokens: { generated: N }, worker: 'hA/w0' });
    const local = await collect(poolB, { ...j, id: 'local-1' }).result;
    expect(res.text).toBe(local.text);
    // Redis-path overhead: the same job, remote vs local, warm.
    const times = { remote: [] as number[], local: [] as number[] };
    for (let i = 0; i < 5; i++) {
      let t = performance.now();
      await collect(c, job({ task: 'describe', detail: 'brief' })).result;
      times.remote.push(performance.now() - t);
      t = performance.now();
      await collect(poolA, job({ task: 'describe', detail: 'brief' })).result;
      times.local.push(performance.now() - t);
    }
    const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1];
    console.log(`first remote job ${ms.toFixed(0)} ms; median remote ${med(times.remote).toFixed(1)} ms vs local ${med(times.local).toFixed(1)} ms`);
    // Bookkeeping is gone once the answer was read.
    await until(async () => (await r.keys('curio:ev:*')).length === 0 && (await r.keys('curio:route:*')).length === 0, 3000, 'cleanup');
  });
});
