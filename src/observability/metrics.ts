/**
 * Curio's Prometheus metrics: one registry per app, fed from two places so that every adapter
 * (Discord, Slack, playground, CLI) is measured the same way without knowing about it:
 *
 * - the inference client wrapper (instrument.ts) sees every job and its `JobResult.timings`
 *   (queue wait, image encode, first token, total, tokens/s) and cache flags;
 * - the commands wrapper sees every request's outcome (done, cached, refused, failed).
 *
 * Pool state (queue depth, running jobs, workers, worker restarts, cache bytes, decode steps)
 * is read from `inference.stats()` at scrape time, so it is never stale.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { InferenceStats, JobResult, TaskKind } from '../inference/types';

/** Seconds: sub-second interactive steps up to multi-minute quizzes on a busy CPU. */
const LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320];
const QUEUE_BUCKETS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TPS_BUCKETS = [0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000];

export type JobState = 'done' | 'cancelled' | 'failed' | 'timeout' | 'busy' | 'bad_image' | 'bad_request' | 'unavailable';

export interface MetricsOptions {
  /** Also export Node's process_* / nodejs_* metrics (CPU, memory, event-loop lag). Default true. */
  processMetrics?: boolean;
}

export class Metrics {
  readonly registry = new Registry();
  private statsSource?: () => InferenceStats;
  private last = { restarts: 0, steps: 0, sequences: 0 };

  readonly queueDepth: Gauge;
  readonly jobsActive: Gauge<'state'>;
  readonly workers: Gauge;
  readonly jobs: Counter<'state' | 'task'>;
  readonly queueWait: Histogram<'task'>;
  readonly imageEncode: Histogram;
  readonly firstToken: Histogram<'task'>;
  readonly jobSeconds: Histogram<'task'>;
  readonly tokensPerSecond: Histogram<'task'>;
  readonly tokens: Counter<'kind' | 'task'>;
  readonly cacheHits: Counter<'cache'>;
  readonly cacheMisses: Counter<'cache'>;
  readonly cacheBytes: Gauge<'cache'>;
  readonly workerRestarts: Counter;
  readonly decodeSteps: Counter;
  readonly decodeSequences: Counter;
  readonly requests: Counter<'platform' | 'command' | 'outcome'>;
  readonly requestSeconds: Histogram<'platform' | 'command'>;

  constructor(options: MetricsOptions = {}) {
    const registers = [this.registry];
    const refresh = () => this.refresh();
    this.queueDepth = new Gauge({ name: 'curio_queue_depth', help: 'Jobs waiting for a worker slot', registers, collect: refresh });
    this.jobsActive = new Gauge({ name: 'curio_jobs_active', help: 'Jobs now queued or running, by state', labelNames: ['state'], registers });
    this.workers = new Gauge({ name: 'curio_workers', help: 'Inference worker threads with the model loaded', registers });
    this.jobs = new Counter({
      name: 'curio_jobs_total',
      help: 'Inference jobs finished, by final state (done, cancelled, failed, timeout, busy, bad_image, bad_request, unavailable) and task',
      labelNames: ['state', 'task'],
      registers,
    });
    this.queueWait = new Histogram({ name: 'curio_queue_wait_seconds', help: 'Time a job waited in the queue before a worker took it', labelNames: ['task'], buckets: QUEUE_BUCKETS, registers });
    this.imageEncode = new Histogram({ name: 'curio_image_encode_seconds', help: 'Vision encoder time for jobs whose image embedding was not cached', buckets: LATENCY_BUCKETS, registers });
    this.firstToken = new Histogram({ name: 'curio_first_token_seconds', help: 'Time from enqueue to the first generated token', labelNames: ['task'], buckets: LATENCY_BUCKETS, registers });
    this.jobSeconds = new Histogram({ name: 'curio_job_seconds', help: 'Total job time, enqueue to last token', labelNames: ['task'], buckets: LATENCY_BUCKETS, registers });
    this.tokensPerSecond = new Histogram({ name: 'curio_tokens_per_second', help: 'Decode speed of finished jobs (generated tokens / generation time)', labelNames: ['task'], buckets: TPS_BUCKETS, registers });
    this.tokens = new Counter({ name: 'curio_tokens_total', help: 'Tokens processed, by kind (prompt, generated) and task', labelNames: ['kind', 'task'], registers });
    this.cacheHits = new Counter({ name: 'curio_cache_hits_total', help: 'Cache hits, by cache (embedding, conversation, result)', labelNames: ['cache'], registers });
    this.cacheMisses = new Counter({ name: 'curio_cache_misses_total', help: 'Cache misses, by cache (embedding, conversation, result)', labelNames: ['cache'], registers });
    this.cacheBytes = new Gauge({ name: 'curio_cache_bytes', help: 'Bytes held by the in-process caches (local pool only)', labelNames: ['cache'], registers });
    this.workerRestarts = new Counter({ name: 'curio_worker_restarts_total', help: 'Inference workers that died and were replaced', registers });
    this.decodeSteps = new Counter({ name: 'curio_decode_steps_total', help: 'Batched decode steps run by the workers', registers });
    this.decodeSequences = new Counter({ name: 'curio_decode_sequences_total', help: 'Sequences decoded over all decode steps (divide by steps for the mean batch size)', registers });
    this.requests = new Counter({
      name: 'curio_requests_total',
      help: 'User requests, by platform, command and outcome (done, cached, refused_<reason>, failed_<code>)',
      labelNames: ['platform', 'command', 'outcome'],
      registers,
    });
    this.requestSeconds = new Histogram({
      name: 'curio_request_seconds',
      help: 'Time from a request arriving to its final reply (includes policy checks and stores)',
      labelNames: ['platform', 'command'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    for (const cache of ['embedding', 'conversation', 'result']) {
      this.cacheHits.inc({ cache }, 0);
      this.cacheMisses.inc({ cache }, 0);
    }
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** Where pool state comes from at scrape time. */
  setStatsSource(source: () => InferenceStats): void {
    this.statsSource = source;
  }

  /** Reads the pool's state into the gauges and the pool's cumulative counts into counters. */
  refresh(): void {
    if (!this.statsSource) return;
    let s: InferenceStats;
    try {
      s = this.statsSource();
    } catch {
      return;
    }
    this.queueDepth.set(s.queued);
    this.jobsActive.set({ state: 'queued' }, s.queued);
    this.jobsActive.set({ state: 'running' }, s.running);
    this.workers.set(s.workers);
    const bump = (c: Counter, key: keyof Metrics['last'], now: number) => {
      if (now > this.last[key]) c.inc(now - this.last[key]);
      this.last[key] = now;
    };
    bump(this.workerRestarts, 'restarts', s.workerRestarts);
    if (s.batches) {
      bump(this.decodeSteps, 'steps', s.batches.steps);
      bump(this.decodeSequences, 'sequences', s.batches.sequences);
    }
    if (s.cacheBytes) {
      this.cacheBytes.set({ cache: 'embedding' }, s.cacheBytes.embeddings);
      this.cacheBytes.set({ cache: 'conversation' }, s.cacheBytes.conversations);
    }
  }

  /** A job finished with a result (`state` is 'done' or 'cancelled'). */
  jobFinished(task: TaskKind, result: JobResult, usedConversationCache: boolean): void {
    const t = result.timings;
    this.jobs.inc({ state: result.finishReason === 'cancelled' ? 'cancelled' : 'done', task });
    this.queueWait.observe({ task }, t.queueMs / 1000);
    if (!result.cache.embedding && t.imageEncodeMs > 0) this.imageEncode.observe(t.imageEncodeMs / 1000);
    if (t.firstTokenMs > 0) this.firstToken.observe({ task }, t.firstTokenMs / 1000);
    this.jobSeconds.observe({ task }, t.totalMs / 1000);
    if (t.tokensPerSecond > 0 && Number.isFinite(t.tokensPerSecond)) this.tokensPerSecond.observe({ task }, t.tokensPerSecond);
    this.tokens.inc({ kind: 'prompt', task }, result.tokens.prompt);
    this.tokens.inc({ kind: 'generated', task }, result.tokens.generated);
    (result.cache.embedding ? this.cacheHits : this.cacheMisses).inc({ cache: 'embedding' });
    if (usedConversationCache) (result.cache.conversation ? this.cacheHits : this.cacheMisses).inc({ cache: 'conversation' });
  }

  /** A job ended without a result. */
  jobFailed(task: TaskKind, code: string): void {
    const state: JobState = code === 'worker_failed' || code === 'internal' ? 'failed' : (code as JobState);
    this.jobs.inc({ state, task });
  }

  request(platform: string, command: string, outcome: string, seconds?: number): void {
    this.requests.inc({ platform, command, outcome });
    if (seconds !== undefined) this.requestSeconds.observe({ platform, command }, seconds);
  }

  resultCache(hit: boolean): void {
    (hit ? this.cacheHits : this.cacheMisses).inc({ cache: 'result' });
  }

  contentType(): string {
    return this.registry.contentType;
  }

  async text(): Promise<string> {
    this.refresh();
    return this.registry.metrics();
  }
}
