/**
 * Observability: /metrics after real jobs on the bundled model, /healthz and /readyz (model
 * loaded, Redis reachable or not), and the structured request log lines.
 */
import { createServer } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import pino from 'pino';
import sharp from 'sharp';
import { createApp, type App } from '../../../src/app';
import { DEFAULT_LIMITS, type CommandRequest, type ReplyEvent } from '../../../src/core/commands';
import type { InferenceClient, InferenceStats, JobEvent, JobResult } from '../../../src/inference/types';
import { InferenceError } from '../../../src/inference/types';
import { Metrics } from '../../../src/observability/metrics';
import { instrumentInference, ObservedCommands, platformOf } from '../../../src/observability/instrument';
import { startOpsServer, type OpsServer } from '../../../src/observability/http';
import { MemoryConversationStore, MemoryImageStore, MemoryRateLimiter, MemoryResultCache } from '../../../src/store/memory';
import { startRedis, type TestRedis } from '../../support/redis';
import { bundledModelConfig } from '../../support/model';


async function circle(fill: string): Promise<Uint8Array> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="white"/><circle cx="48" cy="48" r="34" fill="${fill}"/></svg>`;
  return new Uint8Array(await sharp(Buffer.from(svg)).png().toBuffer());
}

function run(app: { commands: { run: App['commands']['run'] } }, req: CommandRequest): Promise<ReplyEvent[]> {
  const events: ReplyEvent[] = [];
  return app.commands.run(req, (e) => events.push(e)).done.then(() => events);
}

/** The value of one sample line of the exposition text, e.g. `curio_jobs_total{state="done",task="describe"}`. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

const who = { userId: 'web:tester', channelIds: ['web'] };

describe('metrics and health on the bundled model', () => {
  let app: App;
  let ops: OpsServer;

  beforeAll(async () => {
    const config = bundledModelConfig({
      limits: { per_user: { capacity: 100, per_minute: 100 }, per_channel: { capacity: 100, per_minute: 100 } },
    });
    app = await createApp(config, { log: 'silent' });
    ops = await startOpsServer({ host: '127.0.0.1', port: 0, metrics: app.metrics, inference: app.inference, redis: app.redis });
  }, 120_000);

  afterAll(async () => {
    await ops?.stop();
    await app?.close();
  });

  it('/healthz answers while the process lives; unknown paths are 404', async () => {
    const res = await fetch(`${ops.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: 'ok' });
    expect((await fetch(`${ops.url}/nope`)).status).toBe(404);
  });

  it('/readyz is 200 once the model is loaded (no Redis configured)', async () => {
    const res = await fetch(`${ops.url}/readyz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ready', ready: true, checks: { model: { ok: true, workers: 1 } } });
  });

  it('/metrics counts jobs, latencies, tokens and cache use after real requests', async () => {
    const image = await circle('#e02020');
    const first = await run(app, { command: 'describe', who, conversationId: 'web:metrics1', image: { bytes: image } });
    expect(first.at(-1)).toMatchObject({ type: 'done', stats: { cached: false } });
    // The same image and command again: answered from the result cache, no job.
    const again = await run(app, { command: 'describe', who, conversationId: 'web:metrics2', image: { bytes: image } });
    expect(again.at(-1)).toMatchObject({ type: 'done', stats: { cached: true } });
    // A question about the same image: a new job that reuses the image embedding.
    await run(app, { command: 'ask', who, conversationId: 'web:metrics3', image: { bytes: image }, text: 'What colour is it?' });
    // A follow-up: reuses the conversation's KV state.
    await run(app, { command: 'followup', who, conversationId: 'web:metrics3', text: 'Is it round?' });
    // A refusal and a failure are counted by outcome.
    await run(app, { command: 'followup', who, conversationId: 'web:unknown', text: 'hello?' });
    await run(app, { command: 'describe', who, conversationId: 'web:metrics4', image: { bytes: new TextEncoder().encode('not an image') } });

    const res = await fetch(`${ops.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(sample(text, 'curio_jobs_total{state="done",task="describe"}')).toBe(1);
    expect(sample(text, 'curio_jobs_total{state="done",task="ask"}')).toBe(1);
    expect(sample(text, 'curio_jobs_total{state="done",task="chat"}')).toBe(1);
    expect(sample(text, 'curio_jobs_total{state="bad_image",task="describe"}')).toBe(1);
    expect(sample(text, 'curio_queue_wait_seconds_count{task="describe"}')).toBe(1);
    expect(sample(text, 'curio_image_encode_seconds_count')).toBe(1); // the ask reused the embedding
    expect(sample(text, 'curio_first_token_seconds_count{task="describe"}')).toBe(1);
    expect(sample(text, 'curio_job_seconds_count{task="chat"}')).toBe(1);
    expect(sample(text, 'curio_job_seconds_sum{task="describe"}')).toBeGreaterThan(0);
    expect(sample(text, 'curio_tokens_per_second_count{task="describe"}')).toBe(1);
    expect(sample(text, 'curio_tokens_total{kind="generated",task="describe"}')).toBeGreaterThan(0);
    expect(sample(text, 'curio_cache_misses_total{cache="embedding"}')).toBe(1);
    expect(sample(text, 'curio_cache_hits_total{cache="embedding"}')).toBe(2); // ask + chat
    expect(sample(text, 'curio_cache_hits_total{cache="conversation"}')).toBe(1);
    expect(sample(text, 'curio_cache_hits_total{cache="result"}')).toBe(1);
    expect(sample(text, 'curio_cache_misses_total{cache="result"}')).toBe(2); // describe + ask
    expect(sample(text, 'curio_requests_total{platform="web",command="describe",outcome="done"}')).toBe(1);
    expect(sample(text, 'curio_requests_total{platform="web",command="describe",outcome="cached"}')).toBe(1);
    expect(sample(text, 'curio_requests_total{platform="web",command="followup",outcome="refused_no_conversation"}')).toBe(1);
    expect(sample(text, 'curio_requests_total{platform="web",command="describe",outcome="failed_bad_image"}')).toBe(1);
    expect(sample(text, 'curio_queue_depth')).toBe(0);
    expect(sample(text, 'curio_jobs_active{state="running"}')).toBe(0);
    expect(sample(text, 'curio_workers')).toBe(1);
    expect(sample(text, 'curio_worker_restarts_total')).toBe(0);
    expect(sample(text, 'curio_decode_steps_total')).toBeGreaterThan(0);
    expect(sample(text, 'curio_cache_bytes{cache="embedding"}')).toBeGreaterThan(0);
    expect(text).toContain('# TYPE curio_first_token_seconds histogram');
    expect(text).toContain('process_cpu_seconds_total');
  });
});

describe('/readyz', () => {
  const metrics = () => new Metrics({ processMetrics: false });
  const stats = (workers: number): InferenceStats => ({
    queued: 0,
    running: 0,
    workers,
    workerRestarts: 0,
    cache: { embeddingHits: 0, embeddingMisses: 0, conversationHits: 0, conversationMisses: 0 },
  });
  const fakeInference = (workers: number): InferenceClient => ({
    run: () => {
      throw new Error('unused');
    },
    stats: () => stats(workers),
    close: async () => {},
  });

  it('is 503 with a reason while no worker has the model loaded', async () => {
    const ops = await startOpsServer({ host: '127.0.0.1', port: 0, metrics: metrics(), inference: fakeInference(0) });
    try {
      const res = await fetch(`${ops.url}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ status: 'not ready', checks: { model: { ok: false, workers: 0, detail: 'no inference worker has the model loaded' } } });
      expect((await fetch(`${ops.url}/healthz`)).status).toBe(200); // alive, just not ready
    } finally {
      await ops.stop();
    }
  });

  it('a bot whose jobs go to remote workers is ready without local ones', async () => {
    const ops = await startOpsServer({ host: '127.0.0.1', port: 0, metrics: metrics(), inference: fakeInference(0), requireLocalWorkers: false });
    try {
      const res = await fetch(`${ops.url}/readyz`);
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ ready: true, checks: { model: { ok: true, workers: 0, detail: 'jobs go to remote workers' } } });
    } finally {
      await ops.stop();
    }
  });

  it('is 503 when the configured Redis is unreachable', async () => {
    const port = await closedPort();
    const redis = new Redis(`redis://127.0.0.1:${port}`, { maxRetriesPerRequest: 1, retryStrategy: () => 200, disconnectTimeout: 50 });
    redis.on('error', () => {});
    const ops = await startOpsServer({ host: '127.0.0.1', port: 0, metrics: metrics(), inference: fakeInference(1), redis });
    try {
      const res = await fetch(`${ops.url}/readyz`);
      expect(res.status).toBe(503);
      const body = (await res.json()) as { checks: { model: { ok: boolean }; redis: { ok: boolean; detail: string } } };
      expect(body.checks.model.ok).toBe(true);
      expect(body.checks.redis.ok).toBe(false);
      expect(body.checks.redis.detail).toMatch(/redis connection is|PING/);
    } finally {
      await ops.stop();
      redis.disconnect();
    }
  });

  describe('with a real Redis', () => {
    let server: TestRedis;
    beforeAll(async () => {
      server = await startRedis();
    });
    afterAll(async () => server?.stop());

    it('is 200 when Redis answers PING', async () => {
      const redis = new Redis(server.url, { maxRetriesPerRequest: 1, disconnectTimeout: 50 });
      await new Promise((r) => (redis.status === 'ready' ? r(null) : redis.once('ready', r)));
      const ops = await startOpsServer({ host: '127.0.0.1', port: 0, metrics: metrics(), inference: fakeInference(1), redis });
      try {
        const res = await fetch(`${ops.url}/readyz`);
        expect(res.status).toBe(200);
        expect(await res.json()).toMatchObject({ ready: true, checks: { model: { ok: true }, redis: { ok: true } } });
      } finally {
        await ops.stop();
        await redis.quit();
      }
    });
  });
});

describe('structured request logs', () => {
  const result = (over: Partial<JobResult> = {}): JobResult => ({
    task: 'describe',
    text: 'A red circle.',
    finishReason: 'eos',
    template: 'v1',
    turns: [],
    tokens: { prompt: 40, generated: 4 },
    timings: { queueMs: 12.4, imageEncodeMs: 30.2, firstTokenMs: 80.7, totalMs: 120.1, tokensPerSecond: 33.33 },
    cache: { embedding: false, conversation: false },
    worker: 'host/w0',
    ...over,
  });

  function setup(behaviour: (onEvent: (e: JobEvent) => void) => Promise<JobResult>) {
    const lines: Array<Record<string, unknown>> = [];
    const raw: string[] = [];
    const logger = pino(
      { level: 'debug' },
      new Writable({
        write(chunk, _enc, cb) {
          raw.push(String(chunk));
          lines.push(JSON.parse(String(chunk)));
          cb();
        },
      }),
    );
    const metrics = new Metrics({ processMetrics: false });
    const inner: InferenceClient = {
      run: (_job, onEvent) => ({ result: behaviour(onEvent), cancel() {} }),
      stats: () => ({ queued: 0, running: 0, workers: 1, workerRestarts: 0, cache: { embeddingHits: 0, embeddingMisses: 0, conversationHits: 0, conversationMisses: 0 } }),
      close: async () => {},
    };
    const inference = instrumentInference(inner, metrics);
    const commands = new ObservedCommands(
      {
        inference,
        conversations: new MemoryConversationStore({ idleTtlMs: 60_000 }),
        images: new MemoryImageStore({ maxBytes: 1 << 20, ttlMs: 60_000 }),
        limiter: new MemoryRateLimiter(),
        results: new MemoryResultCache({ max: 10, ttlMs: 60_000 }),
        limits: DEFAULT_LIMITS,
      },
      { metrics, logger },
    );
    return { commands, lines, raw, metrics };
  }

  it('one line per request: id, platform, command, outcome, job timings; no image bytes or message text', async () => {
    const { commands, lines, raw } = setup(async (onEvent) => {
      onEvent({ type: 'queued', position: 2 });
      onEvent({ type: 'started', worker: 'host/w0' });
      onEvent({ type: 'token', text: 'A red circle.' });
      return result();
    });
    const image = await circle('#e02020');
    await run({ commands }, { command: 'ask', who: { userId: 'U1', channelIds: ['C1'] }, conversationId: 'slack:C1:1.2', image: { bytes: image }, text: 'secret question text' });
    const done = lines.filter((l) => l.msg === 'request done');
    expect(done).toHaveLength(1);
    expect(done[0]).toMatchObject({
      level: 30,
      platform: 'slack',
      command: 'ask',
      conversation: 'slack:C1:1.2',
      user: 'U1',
      imageBytes: image.byteLength,
      textChars: 20,
      outcome: 'done',
      worker: 'host/w0',
      timings: { queueMs: 12, imageEncodeMs: 30, firstTokenMs: 81, totalMs: 120, tokensPerSecond: 33.3 },
      tokens: { prompt: 40, generated: 4 },
      cache: { embedding: false, conversation: false },
      finish: 'eos',
    });
    expect(done[0].req).toMatch(/^[0-9a-f]{12}$/);
    expect(lines.find((l) => l.msg === 'request queued')).toMatchObject({ req: done[0].req, position: 2, level: 20 });
    const all = raw.join('');
    expect(all).not.toContain('secret question text');
    expect(all).not.toContain(Buffer.from(image).toString('base64').slice(0, 40));
  });

  it('failures log the code at the right level; each request gets its own id', async () => {
    let n = 0;
    const { commands, lines, metrics } = setup(async () => {
      n++;
      if (n === 1) throw new InferenceError('bad_image', 'That file is not an image I can read.');
      throw new InferenceError('worker_failed', 'The model crashed twice on this request.');
    });
    await run({ commands }, { command: 'describe', who, conversationId: 'discord:1', image: { bytes: new Uint8Array([1, 2, 3]) } });
    await run({ commands }, { command: 'describe', who, conversationId: 'discord:2', image: { bytes: new Uint8Array([4, 5, 6]) } });
    const failed = lines.filter((l) => l.msg === 'request failed');
    expect(failed.map((l) => [l.level, l.code, l.platform])).toEqual([
      [30, 'bad_image', 'discord'],
      [40, 'worker_failed', 'discord'],
    ]);
    expect(failed[0].req).not.toBe(failed[1].req);
    const text = await metrics.text();
    expect(sample(text, 'curio_jobs_total{state="bad_image",task="describe"}')).toBe(1);
    expect(sample(text, 'curio_jobs_total{state="failed",task="describe"}')).toBe(1);
  });

  it('platform comes from the conversation key', () => {
    expect(platformOf('discord:123')).toBe('discord');
    expect(platformOf('slack:C1:1.2')).toBe('slack');
    expect(platformOf('web:abc')).toBe('web');
    expect(platformOf('cli:1:0')).toBe('cli');
    expect(platformOf('weird')).toBe('unknown');
  });
});
