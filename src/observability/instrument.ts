/**
 * Measuring and logging every request without touching core or the adapters:
 *
 * - `instrumentInference` wraps the inference client (local pool or remote queue): each job's
 *   result feeds the latency histograms and cache counters, and its timings are attached to the
 *   request that caused it.
 * - `ObservedCommands` is `Commands` with each `run` given a request id and an async context
 *   (AsyncLocalStorage, so the job started deep inside core finds its request), counted by
 *   platform/command/outcome, and logged as one structured line when it ends.
 *
 * Log lines carry ids, names, sizes and timings only: never image bytes, prompts' secrets or
 * platform tokens. Message text is not logged either (users' questions are theirs); only its
 * length is.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { Commands, type CommandDeps, type CommandRequest, type ReplyEvent, type Running } from '../core/commands';
import type { InferenceClient, InferenceJob, JobEvent, JobTimings, RunHandle } from '../inference/types';
import type { Metrics } from './metrics';

interface RequestContext {
  id: string;
  jobs: Array<{ id: string; task: string; timings?: JobTimings; tokens?: { prompt: number; generated: number }; cache?: { embedding: boolean; conversation: boolean }; worker?: string; error?: string; finish?: string }>;
}

const context = new AsyncLocalStorage<RequestContext>();

/** The platform a conversation belongs to, from its key's prefix (`discord:…`, `slack:…`, `web:…`, `cli:…`). */
export function platformOf(conversationId: string): string {
  const m = /^([a-z][a-z0-9_-]{0,15}):/.exec(conversationId);
  return m ? m[1] : 'unknown';
}

export function newRequestId(): string {
  return randomBytes(6).toString('hex');
}

class InstrumentedInference implements InferenceClient {
  constructor(
    private readonly inner: InferenceClient,
    private readonly metrics: Metrics,
  ) {}

  run(job: InferenceJob, onEvent: (event: JobEvent) => void): RunHandle {
    const ctx = context.getStore();
    const record: RequestContext['jobs'][number] = { id: job.id, task: job.task };
    ctx?.jobs.push(record);
    const handle = this.inner.run(job, (ev) => {
      if (ev.type === 'started') record.worker = ev.worker;
      onEvent(ev);
    });
    // Registered before the caller's own handlers: the request's log line sees these fields.
    handle.result.then(
      (r) => {
        this.metrics.jobFinished(job.task, r, !!job.history);
        Object.assign(record, { timings: r.timings, tokens: r.tokens, cache: r.cache, worker: r.worker, finish: r.finishReason });
      },
      (err: { code?: string }) => {
        const code = err?.code ?? 'internal';
        this.metrics.jobFailed(job.task, code);
        record.error = code;
      },
    );
    return handle;
  }

  stats() {
    return this.inner.stats();
  }

  close() {
    return this.inner.close();
  }
}

/** The inference client, measured. Extra properties of the inner client (`info`, `ready`…) stay reachable. */
export function instrumentInference<T extends InferenceClient>(inner: T, metrics: Metrics): T {
  const wrapped = new InstrumentedInference(inner, metrics);
  metrics.setStatsSource(() => inner.stats());
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'run') return wrapped.run.bind(wrapped);
      if (prop === 'stats') return wrapped.stats.bind(wrapped);
      if (prop === 'close') return wrapped.close.bind(wrapped);
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

function outcomeOf(ev: ReplyEvent): string | undefined {
  if (ev.type === 'done') return ev.stats.cached ? 'cached' : 'done';
  if (ev.type === 'refused') return `refused_${ev.reason}`;
  if (ev.type === 'failed') return `failed_${ev.code}`;
  return undefined;
}

/** User mistakes are not operator problems: they log at info, real failures at warn/error. */
const USER_ERRORS = new Set(['bad_request', 'bad_image', 'cancelled']);

export class ObservedCommands extends Commands {
  constructor(
    deps: CommandDeps,
    private readonly observe: { metrics: Metrics; logger: Logger },
  ) {
    super(deps);
  }

  override run(request: CommandRequest, emit: (event: ReplyEvent) => void): Running {
    const { metrics, logger } = this.observe;
    const ctx: RequestContext = { id: newRequestId(), jobs: [] };
    const platform = platformOf(request.conversationId);
    const command = request.command === 'followup' && request.image ? 'describe' : request.command;
    const t0 = performance.now();
    const base = {
      req: ctx.id,
      platform,
      command,
      conversation: request.conversationId,
      user: request.who.userId,
      ...(request.image ? { imageBytes: request.image.bytes.byteLength } : {}),
      ...(request.text ? { textChars: request.text.length } : {}),
      ...(request.detail ? { detail: request.detail } : {}),
      ...(request.rounds ? { rounds: request.rounds } : {}),
    };
    let finished = false;
    const observed = (ev: ReplyEvent) => {
      const outcome = outcomeOf(ev);
      if (ev.type === 'queued' && ev.position > 1) logger.debug({ ...base, position: ev.position }, 'request queued');
      if (outcome && !finished) {
        finished = true;
        const ms = performance.now() - t0;
        metrics.request(platform, command, outcome, ms / 1000);
        const cacheable = (command === 'describe' || command === 'ask') && request.seed === undefined;
        if (ev.type === 'done' && cacheable) metrics.resultCache(ev.stats.cached);
        const job = ctx.jobs[ctx.jobs.length - 1];
        const line = {
          ...base,
          outcome,
          ms: Math.round(ms),
          ...(job
            ? {
                job: job.id,
                ...(job.worker ? { worker: job.worker } : {}),
                ...(job.timings
                  ? {
                      timings: {
                        queueMs: Math.round(job.timings.queueMs),
                        imageEncodeMs: Math.round(job.timings.imageEncodeMs),
                        firstTokenMs: Math.round(job.timings.firstTokenMs),
                        totalMs: Math.round(job.timings.totalMs),
                        tokensPerSecond: Math.round(job.timings.tokensPerSecond * 10) / 10,
                      },
                    }
                  : {}),
                ...(job.tokens ? { tokens: job.tokens } : {}),
                ...(job.cache ? { cache: job.cache } : {}),
                ...(job.finish ? { finish: job.finish } : {}),
              }
            : {}),
        };
        if (ev.type === 'done') logger.info(line, 'request done');
        else if (ev.type === 'refused') logger.info({ ...line, reason: ev.reason }, 'request refused');
        else if (ev.type === 'failed') {
          const lvl = USER_ERRORS.has(ev.code) ? 'info' : ev.code === 'internal' ? 'error' : 'warn';
          logger[lvl]({ ...line, code: ev.code }, 'request failed');
        }
      }
      emit(ev);
    };
    return context.run(ctx, () => super.run(request, observed));
  }
}
