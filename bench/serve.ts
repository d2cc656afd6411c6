/**
 * `npm run bench:serve` — serving figures on the local worker pool (createLocalInference), driven
 * through the InferenceClient directly (no bot in front):
 *
 *   1. throughput (images/s, generated tokens/s) and p50/p95 latency of describe requests at 1, 4,
 *      16 and 64 concurrent clients (closed loop; every request a distinct rendered image and its
 *      own conversation, so neither the embedding nor the conversation cache hides work);
 *   2. continuous batching: throughput at 8 concurrent requests with batching (pool defaults) vs
 *      one at a time (`maxBatch: 1, concurrentTasksPerWorker: 1`);
 *   3. time to first token of a follow-up turn (chat on the cached conversation) vs the first
 *      turn (describe of a new image), and of a second quiz round vs the first quiz;
 *   4. queueing overhead per job: local pool (client latency minus the worker's own job time) and
 *      the Redis path (RemoteInference → BullMQ → startRemoteWorker → the same pool, minus the
 *      pool's latency), at one request at a time;
 *   5. worker memory (process RSS; the workers are threads of this process).
 *
 *   npm run bench:serve -- [--bundle DIR] [--levels 1,4,16,64] [--requests N] [--tasks-per-worker N]
 *                          [--max-new-tokens N] [--no-redis]
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import * as net from 'node:net';
import * as path from 'node:path';

import { createLocalInference, LocalInference, LocalInferenceOptions } from '../src/inference/local';
import type { InferenceClient, InferenceJob, JobEvent, JobResult, RunHandle } from '../src/inference/types';
import { fmt, machine, median, parseArgs, peakRssMB, pickBundle, quantile, renderScene, ROOT, table } from './common';

interface Timed {
  latencyMs: number;
  ttftMs: number;
  result: JobResult;
}

let imageCounter = 1000;
async function freshImages(n: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) out.push(await renderScene(imageCounter++));
  return out;
}

function describeJob(bytes: Buffer, maxNewTokens?: number): InferenceJob {
  const digest = createHash('sha256').update(bytes).digest('hex');
  return {
    id: randomUUID(),
    task: 'describe',
    detail: 'brief',
    image: { digest, bytes: new Uint8Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)) },
    conversationId: randomUUID(),
    priority: 'interactive',
    ...(maxNewTokens ? { maxNewTokens } : {}),
  };
}

function timed(client: InferenceClient, job: InferenceJob): Promise<Timed> {
  const t0 = performance.now();
  let ttft = NaN;
  const h = client.run(job, (ev: JobEvent) => {
    if (ev.type === 'token' && Number.isNaN(ttft)) ttft = performance.now() - t0;
  });
  // A reply that is empty (EOS first) sends no token event: its first token is known when it is done.
  return h.result.then((result) => {
    const latencyMs = performance.now() - t0;
    return { latencyMs, ttftMs: Number.isNaN(ttft) ? latencyMs : ttft, result };
  });
}

/** `total` jobs from `concurrency` closed-loop clients. */
async function load(client: InferenceClient, jobs: InferenceJob[], concurrency: number) {
  let next = 0;
  const done: Timed[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, jobs.length) }, async () => {
      while (next < jobs.length) done.push(await timed(client, jobs[next++]));
    }),
  );
  const wallMs = performance.now() - t0;
  const tokens = done.reduce((n, d) => n + d.result.tokens.generated, 0);
  const lat = done.map((d) => d.latencyMs);
  return {
    n: done.length,
    wallMs,
    imagesPerS: (done.length * 1000) / wallMs,
    tokensPerS: (tokens * 1000) / wallMs,
    p50: quantile(lat, 0.5),
    p95: quantile(lat, 0.95),
    meanTokens: tokens / done.length,
    done,
  };
}

function rssMB(): number {
  return process.memoryUsage().rss / 2 ** 20;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** An InferenceClient that records each job's latency as seen by the pool's caller. */
function recording(inner: InferenceClient, seen: Map<string, number>): InferenceClient {
  return {
    run(job: InferenceJob, onEvent: (e: JobEvent) => void): RunHandle {
      const t0 = performance.now();
      const h = inner.run(job, onEvent);
      return {
        cancel: h.cancel,
        result: h.result.then((r) => {
          seen.set(job.id, performance.now() - t0);
          return r;
        }),
      };
    },
    stats: () => inner.stats(),
    close: () => inner.close(),
  };
}

interface RemoteModule {
  createRemoteInference(o: { redisUrl: string; maxQueue?: number }): InferenceClient;
  startRemoteWorker(o: { redisUrl: string; inference: InferenceClient; hostId: string; concurrency?: number; closeInference?: boolean }): Promise<{ close(): Promise<void> }>;
}

async function redisPath(pool: LocalInference, host: string, n: number, maxNewTokens: number | undefined): Promise<string[]> {
  let mod: RemoteModule;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(path.join(ROOT, 'src', 'inference', 'remote')) as RemoteModule;
  } catch (e) {
    return [`Redis path: not available (src/inference/remote does not load: ${(e as Error).message.split('\n')[0]})`];
  }
  const redisBin = 'redis-server';
  try {
    execFileSync('which', ['redis-server']);
  } catch {
    return ['Redis path: not available (no redis-server on this machine)'];
  }
  const port = await freePort();
  const server = spawn(redisBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const lines: string[] = [];
  try {
    await new Promise((r) => setTimeout(r, 300));
    const redisUrl = `redis://127.0.0.1:${port}`;
    const seen = new Map<string, number>();
    const worker = await mod.startRemoteWorker({ redisUrl, inference: recording(pool, seen), hostId: host, closeInference: false });
    const client = mod.createRemoteInference({ redisUrl, maxQueue: 1024 });
    try {
      const images = await freshImages(n + 2);
      for (let i = 0; i < 2; i++) await timed(client, describeJob(images[i], maxNewTokens)); // warm-up
      const overhead: number[] = [];
      const lat: number[] = [];
      for (let i = 2; i < images.length; i++) {
        const job = describeJob(images[i], maxNewTokens);
        const t = await timed(client, job);
        const inner = seen.get(job.id);
        lat.push(t.latencyMs);
        if (inner !== undefined) overhead.push(t.latencyMs - inner);
      }
      lines.push(
        table(
          ['path', 'jobs', 'latency p50 ms', 'overhead p50 ms', 'overhead p95 ms', 'target'],
          [['Redis (BullMQ) → pool', overhead.length, median(lat), median(overhead), quantile(overhead, 0.95), `< 10 ms -> ${median(overhead) < 10 ? 'MET' : 'NOT MET'}`]],
        ),
      );
      lines.push(`(overhead = latency seen by RemoteInference.run minus the latency of the same job on the pool it was handed to)`);
    } finally {
      await client.close().catch(() => {});
      await worker.close().catch(() => {});
    }
  } catch (e) {
    lines.push(`Redis path: failed: ${(e as Error).message}`);
  } finally {
    server.kill('SIGTERM');
  }
  return lines;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const { dir, note } = pickBundle(args.bundle);
  const levels = typeof args.levels === 'string' ? args.levels.split(',').map(Number) : [1, 4, 16, 64];
  const maxNewTokens = typeof args['max-new-tokens'] === 'string' ? Number(args['max-new-tokens']) : undefined;
  const tasksPerWorker = typeof args['tasks-per-worker'] === 'string' ? Number(args['tasks-per-worker']) : undefined;
  const host = 'bench';
  const mc = machine();
  console.log(`# bench:serve  ${new Date().toISOString()}`);
  console.log(`machine: ${mc.cpu}, ${mc.cores} cores, ${fmt(mc.memGiB, 1)} GiB RAM, Node ${mc.node}`);
  console.log(`bundle: ${path.relative(ROOT, dir)}`);
  if (note) console.log(`NOTE: ${note}`);
  try {
    const pids = execFileSync('pgrep', ['-f', 'training.train'], { encoding: 'utf8' }).trim();
    if (pids) console.log(`NOTE: a training job is running (pid ${pids.split('\n').join(', ')}): figures are under CPU contention`);
  } catch {
    /* none */
  }

  const rss0 = rssMB();
  const base: LocalInferenceOptions = { bundleDir: dir, maxQueue: 4096, host, ...(tasksPerWorker ? { concurrentTasksPerWorker: tasksPerWorker } : {}) };
  const tLoad = performance.now();
  const pool = await createLocalInference(base);
  const loadMs = performance.now() - tLoad;
  const rssLoaded = rssMB();
  const perWorker = tasksPerWorker ?? 4;
  console.log(
    `pool: ${pool.sizing.workers} worker(s) x ${pool.sizing.intraOpNumThreads} intra-op thread(s), ${perWorker} jobs in flight per worker, ` +
      `model ${pool.info.name} (${pool.info.dtype}), ready in ${fmt(loadMs, 0)} ms; describe = brief, ${maxNewTokens ?? 'bundle default'} max new tokens`,
  );

  // warm-up
  await load(pool, (await freshImages(2)).map((b) => describeJob(b, maxNewTokens)), 1);

  // 1. concurrency levels
  console.log('\n## Describe throughput and latency by concurrency\n');
  const rows: (string | number)[][] = [];
  let level1: Awaited<ReturnType<typeof load>> | null = null;
  for (const c of levels) {
    const n = typeof args.requests === 'string' ? Number(args.requests) : Math.max(8, c);
    const jobs = (await freshImages(n)).map((b) => describeJob(b, maxNewTokens));
    const r = await load(pool, jobs, c);
    if (c === 1) level1 = r;
    rows.push([c, r.n, r.imagesPerS, r.tokensPerS, r.p50, r.p95, r.meanTokens]);
    process.stderr.write(`  concurrency ${c}: ${fmt(r.imagesPerS)} images/s\n`);
  }
  console.log(table(['concurrent', 'requests', 'images/s', 'tokens/s', 'p50 ms', 'p95 ms', 'tokens/request'], rows));
  const st = pool.stats();
  if (st.batches) {
    const hist = Object.entries(st.batches.histogram).map(([k, v]) => `${k}:${v}`).join(' ');
    console.log(`(decode batch sizes over these runs, size:steps — ${hist}; max ${st.batches.maxBatch})`);
  }

  // 3. follow-up and second quiz round vs first turn (one at a time)
  console.log('\n## Time to first token: follow-ups vs the first turn (one request at a time)\n');
  const reps = 5;
  const ttft = { describe: [] as number[], chat: [] as number[], quiz: [] as number[], quiz2: [] as number[] };
  const images = await freshImages(2 * reps);
  // Each quiz part (description, question, answer) capped so two rounds fit any bundle's context.
  const quizTokens = Math.min(maxNewTokens ?? 32, 32);
  for (let i = 0; i < reps; i++) {
    const dj = describeJob(images[2 * i], maxNewTokens);
    const d = await timed(pool, dj);
    ttft.describe.push(d.ttftMs);
    const c = await timed(pool, {
      id: randomUUID(),
      task: 'chat',
      text: 'What colour is the largest shape?',
      image: { digest: dj.image.digest },
      conversationId: dj.conversationId,
      history: { template: d.result.template, turns: d.result.turns, ...(d.result.conversationTokens ? { tokens: d.result.conversationTokens } : {}) },
      priority: 'interactive',
      ...(maxNewTokens ? { maxNewTokens } : {}),
    });
    ttft.chat.push(c.ttftMs);
    if (!c.result.cache.conversation) process.stderr.write('  note: follow-up missed the conversation cache\n');

    const qj: InferenceJob = { ...describeJob(images[2 * i + 1], quizTokens), task: 'quiz', rounds: 1, seed: 1 + i };
    delete (qj as { detail?: string }).detail;
    const q = await timed(pool, qj);
    ttft.quiz.push(q.ttftMs);
    const q2 = await timed(pool, {
      id: randomUUID(),
      task: 'quiz',
      rounds: 1,
      seed: 100 + i,
      image: { digest: qj.image.digest },
      conversationId: qj.conversationId,
      history: { template: q.result.template, turns: q.result.turns, ...(q.result.conversationTokens ? { tokens: q.result.conversationTokens } : {}) },
      priority: 'batch',
      maxNewTokens: quizTokens,
    });
    ttft.quiz2.push(q2.ttftMs);
    if (q2.result.rounds?.length !== 1) process.stderr.write(`  note: second quiz round ended early (${q2.result.finishReason})\n`);
  }
  const dM = median(ttft.describe);
  const cM = median(ttft.chat);
  const qM = median(ttft.quiz);
  const q2M = median(ttft.quiz2);
  console.log(
    table(
      ['turn', 'TTFT p50 ms', 'vs first turn', 'target'],
      [
        ['describe (first turn: image preprocess + encode + prefill)', dM, '100%', ''],
        ['chat follow-up (cached conversation)', cM, fmt((100 * cM) / dM, 1) + '%', `<= 20% -> ${cM / dM <= 0.2 ? 'MET' : 'NOT MET'}`],
        ['quiz, first (new image)', qM, '100%', ''],
        ['quiz, second round (cached conversation)', q2M, fmt((100 * q2M) / qM, 1) + '%', `<= 20% -> ${q2M / qM <= 0.2 ? 'MET' : 'NOT MET'}`],
      ],
    ),
  );
  console.log(`(TTFT = from InferenceClient.run() to the first token event, on the client side, or to the result when the reply is empty; median of ${reps}; quiz parts capped at ${quizTokens} tokens)`);

  // 4. queueing overhead
  console.log('\n## Queueing overhead per job (one request at a time)\n');
  const lvl = level1 ?? (await load(pool, (await freshImages(8)).map((b) => describeJob(b, maxNewTokens)), 1));
  const poolOverhead = lvl.done.map((d) => d.latencyMs - d.result.timings.totalMs);
  console.log(
    table(
      ['path', 'jobs', 'latency p50 ms', 'overhead p50 ms', 'overhead p95 ms', 'target'],
      [['local pool', poolOverhead.length, lvl.p50, median(poolOverhead), quantile(poolOverhead, 0.95), `< 2 ms -> ${median(poolOverhead) < 2 ? 'MET' : 'NOT MET'}`]],
    ),
  );
  console.log('(overhead = client latency minus the worker\'s own time for the job, timings.totalMs: queueing, dispatch, messages, transfers, caches)');
  if (args['no-redis'] === true) console.log('\nRedis path: skipped (--no-redis)');
  else {
    const lines = await redisPath(pool, host, 10, maxNewTokens);
    console.log('\n' + lines.join('\n'));
  }

  const rssEnd = rssMB();
  await pool.close();

  // 2. batched vs one at a time at 8 concurrent
  console.log('\n## Continuous batching: 8 concurrent describe requests\n');
  const eight = async (o: Partial<LocalInferenceOptions>) => {
    const p = await createLocalInference({ ...base, ...o });
    try {
      await load(p, (await freshImages(2)).map((b) => describeJob(b, maxNewTokens)), 2);
      const r = await load(p, (await freshImages(16)).map((b) => describeJob(b, maxNewTokens)), 8);
      return { r, batches: p.stats().batches };
    } finally {
      await p.close();
    }
  };
  const one = await eight({ maxBatch: 1, concurrentTasksPerWorker: 1 });
  const batched = await eight({});
  const batched8 = tasksPerWorker ? null : await eight({ concurrentTasksPerWorker: 8 });
  const bRows: (string | number)[][] = [
    ['one at a time (maxBatch 1, 1 job per worker)', one.r.imagesPerS, one.r.tokensPerS, one.r.p50, one.r.p95, '1.00×'],
    [`batched (pool defaults: ${perWorker} jobs per worker, maxBatch 16)`, batched.r.imagesPerS, batched.r.tokensPerS, batched.r.p50, batched.r.p95, fmt(batched.r.tokensPerS / one.r.tokensPerS, 2) + '×'],
  ];
  if (batched8) {
    bRows.push(['batched, 8 jobs per worker', batched8.r.imagesPerS, batched8.r.tokensPerS, batched8.r.p50, batched8.r.p95, fmt(batched8.r.tokensPerS / one.r.tokensPerS, 2) + '×']);
  }
  console.log(table(['mode', 'images/s', 'tokens/s', 'p50 ms', 'p95 ms', 'tokens/s vs one at a time'], bRows));
  const best = Math.max(batched.r.tokensPerS, batched8?.r.tokensPerS ?? 0) / one.r.tokensPerS;
  const bestImg = Math.max(batched.r.imagesPerS, batched8?.r.imagesPerS ?? 0) / one.r.imagesPerS;
  console.log(`target batched >= 2.5x one at a time: best ${fmt(best, 2)}x tokens/s, ${fmt(bestImg, 2)}x images/s -> ${best >= 2.5 ? 'MET' : 'NOT MET'}`);

  console.log('\n## Worker memory\n');
  console.log(
    table(
      ['process RSS before pool MB', 'after load MB', 'per worker MB', 'after the load runs MB', 'peak RSS MB'],
      [[rss0, rssLoaded, (rssLoaded - rss0) / pool.sizing.workers, rssEnd, peakRssMB()]],
    ),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
