/**
 * Faults on the Redis queue path: a worker host SIGKILLed mid-job (in a child process), and
 * Redis stopped and restarted mid-queue (a private redis-server, with and without persistence).
 * Every job must end in an answer or a clear error; nothing hangs, nothing is lost.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';

import { createLocalInference, InferenceError, LocalInference } from '../../../src/inference';
import { createRemoteInference, RemoteWorker, startRemoteWorker } from '../../../src/inference/remote';
import { startRedis, TestRedis } from '../../support/redis';
import { BUNDLE, collect, DIGEST, IMAGE, job, sleep, slowed, spawnHost, streamed, until } from './helpers';

jest.setTimeout(60000);

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** A redis-server we can stop and start again on the same port and data folder. */
class OwnRedis {
  child?: ChildProcess;
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'curio-redis-'));
  constructor(
    readonly port: number,
    readonly persist: boolean,
  ) {}
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  async start(): Promise<void> {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--dir', this.dir];
    args.push('--appendonly', this.persist ? 'yes' : 'no', '--appendfsync', 'always');
    this.child = spawn('redis-server', args, { stdio: 'ignore' });
    const probe = new Redis(this.url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    await until(async () => {
      try {
        if (probe.status !== 'ready') await probe.connect();
        return (await probe.ping()) === 'PONG';
      } catch {
        probe.disconnect();
        return false;
      }
    }, 10000, 'redis-server');
    probe.disconnect();
  }
  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    await exited;
  }
}

describe('remote inference faults', () => {
  let pool: LocalInference;
  beforeAll(async () => {
    pool = await createLocalInference({ bundleDir: BUNDLE, workers: 1, intraOpNumThreads: 1, concurrentTasksPerWorker: 4, maxQueue: 256, host: 'hB' });
    // Warm up (first-run allocations in ORT) so memory checks measure the faults, not the model.
    await Promise.all([1, 2, 3].map(() => collect(pool, job({ maxNewTokens: 6 })).result));
  });
  afterAll(() => pool?.close());

  it('a worker host killed mid-job: its jobs (running and routed to it) finish on another host', async () => {
    const redis: TestRedis = await startRedis();
    const fast = { LOCK_MS: '1500', STALLED_MS: '700', HEARTBEAT_MS: '300' };
    let child: ChildProcess | undefined = await spawnHost({ REDIS_URL: redis.url, HOST_ID: 'hK', SLOW_MS: '150', ...fast });
    const c = createRemoteInference({ redisUrl: redis.url, pollMs: 200 });
    let b: RemoteWorker | undefined;
    try {
      // A conversation whose state lives on hK.
      const first = await collect(c, job({ conversationId: 'kill-conv', maxNewTokens: 2 })).result;
      expect(first.worker).toBe('hK/w0');
      const running = [collect(c, job({ maxNewTokens: 12 })), collect(c, job({ maxNewTokens: 12, priority: 'batch' }))];
      await until(() => running.every((x) => x.events.some((e) => e.type === 'token')), 15000, 'tokens from hK');
      const t0 = performance.now();
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
      child = undefined;
      // Routed to hK's own queue: its heartbeat has not expired yet.
      const history = { template: first.template, turns: first.turns, tokens: first.conversationTokens };
      const followUp = collect(c, job({ task: 'chat', conversationId: 'kill-conv', text: 'More?', history, image: { digest: DIGEST } }));
      await sleep(100);
      b = await startRemoteWorker({ redisUrl: redis.url, inference: pool, hostId: 'hB', concurrency: 4, lockDurationMs: 1500, stalledIntervalMs: 700, heartbeatMs: 300 });
      const results = await Promise.all([...running, followUp].map((x) => x.result));
      console.log(`killed host: its 3 jobs answered by another host ${(performance.now() - t0).toFixed(0)} ms after the kill`);
      for (const [i, res] of results.entries()) {
        expect(res.worker).toBe('hB/w0');
        // The retry streamed its tokens again; listeners saw each once.
        expect(streamed([...running, followUp][i].events).trim()).toBe(res.text);
      }
      expect(results[0].tokens.generated).toBe(12);
      expect(results[2].cache.conversation).toBe(false); // rebuilt from history on hB
    } finally {
      child?.kill('SIGKILL');
      await b?.close();
      await c.close();
      await redis.stop();
    }
  });

  for (const persist of [true, false]) {
    it(`Redis stopped and restarted mid-queue (${persist ? 'AOF' : 'no persistence: the bot resubmits'}): every job is answered`, async () => {
      const own = new OwnRedis(await freePort(), persist);
      await own.start();
      const w = await startRemoteWorker({ redisUrl: own.url, inference: slowed(pool, 30), hostId: 'hR', concurrency: 2, heartbeatMs: 300 });
      const c = createRemoteInference({ redisUrl: own.url, pollMs: 200, maxQueue: 50 });
      const rss0 = process.memoryUsage().rss;
      try {
        const runs = Array.from({ length: 8 }, (_, i) => collect(c, job({ maxNewTokens: 6, priority: i % 2 ? 'batch' : 'interactive' })));
        // All queued (admitted into Redis) and some running when Redis goes away.
        await until(() => runs.every((x) => x.events.some((e) => e.type === 'queued' || e.type === 'started')), 15000, 'all admitted');
        await until(() => runs.some((x) => x.events.some((e) => e.type === 'token')), 15000, 'first tokens');
        const t0 = performance.now();
        await own.stop();
        // While Redis is away, new work is refused at once, not left hanging.
        await sleep(300);
        const refused = await collect(c, job()).settled;
        expect(refused).toBeInstanceOf(InferenceError);
        expect((refused as InferenceError).code).toBe('unavailable');
        await sleep(700);
        await own.start();
        const outcomes = await Promise.all(runs.map((x) => x.settled));
        const errors = outcomes.filter((o) => o instanceof InferenceError);
        console.log(`redis restart (${persist ? 'aof' : 'none'}): ${outcomes.length - errors.length}/8 answered ${(performance.now() - t0).toFixed(0)} ms after the stop; errors ${errors.map((e) => (e as InferenceError).code)}`);
        expect(errors).toEqual([]);
        for (const [i, x] of runs.entries()) expect(streamed(x.events).trim()).toBe((outcomes[i] as { text: string }).text);
        // The queue works normally afterwards.
        expect((await collect(c, job()).result).worker).toMatch(/\/w0$/);
        expect(c.stats()).toMatchObject({ queued: 0, running: 0 });
        expect(process.memoryUsage().rss - rss0).toBeLessThan(64 * 2 ** 20);
      } finally {
        await w.close();
        await c.close();
        await own.stop();
        fs.rmSync(own.dir, { recursive: true, force: true });
      }
    });
  }
});
