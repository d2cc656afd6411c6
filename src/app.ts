/**
 * The composition root: builds Curio's parts from the configuration. In-memory stores and a
 * local worker pool by default; Redis-backed stores when `redis.url` is set. Adapters (CLI,
 * Discord, Slack, playground) receive the resulting `Commands`.
 */
import { Redis } from 'ioredis';
import pino, { type Logger } from 'pino';
import type { Config } from './config';
import type { Commands, CommandDeps } from './core/commands';
import type { InferenceClient } from './inference/types';
import { createLocalInference, type LocalInference, type LocalInferenceOptions } from './inference';
import { createRemoteInference } from './inference/remote';
import { MemoryConversationStore, MemoryImageStore, MemoryRateLimiter, MemoryResultCache } from './store/memory';
import { RedisConversationStore, RedisImageStore, RedisRateLimiter, RedisResultCache } from './store/redis';
import { Metrics } from './observability/metrics';
import { instrumentInference, ObservedCommands } from './observability/instrument';

export interface App {
  config: Config;
  commands: Commands;
  inference: InferenceClient;
  /** Shared Redis connection when configured (adapters use it for their own state, e.g. event dedupe). */
  redis?: Redis;
  modelName: string;
  logger: Logger;
  /** Prometheus registry fed by every request and job (served on http.port by main). */
  metrics: Metrics;
  close(): Promise<void>;
}

export interface AppOptions {
  /** Use this inference client instead of a local pool (remote queue, tests). */
  inference?: InferenceClient;
  log?: 'silent' | Config['log']['level'];
}

const MB = 1024 * 1024;

export function createLogger(level: AppOptions['log']): Logger {
  return pino({
    level: level ?? 'info',
    // Secrets never go through the config, but adapters log request objects: redact anyway.
    redact: { paths: ['*.token', '*.botToken', '*.signingSecret', '*.appToken', 'headers.authorization', '*.password'], censor: '[redacted]' },
  });
}

/** The local pool's options from the configuration (also used by `curio worker`). */
export function localInferenceOptions(config: Config, logger: Logger, extra: Partial<LocalInferenceOptions> = {}): LocalInferenceOptions {
  return {
    bundleDir: config.model.dir,
    dtype: config.model.dtype || undefined,
    device: config.model.device,
    gpus: config.model.gpus,
    workers: config.inference.workers || undefined,
    intraOpNumThreads: config.inference.intra_op_threads || undefined,
    // A worker decodes together the jobs it holds, so jobs in flight per worker = batch size.
    maxBatch: config.inference.max_batch,
    concurrentTasksPerWorker: config.inference.max_batch,
    maxQueue: config.inference.max_queue,
    jobTimeoutMs: config.inference.job_timeout_s * 1000,
    embeddingCacheBytes: config.inference.embedding_cache_mb * MB,
    conversationCacheBytes: config.inference.conversation_cache_mb * MB,
    imageLimits: { maxBytes: config.limits.max_image_mb * MB, maxPixels: config.limits.max_image_megapixels * 1e6 },
    logger,
    ...extra,
  };
}

export async function createApp(config: Config, options: AppOptions = {}): Promise<App> {
  const logger = createLogger(options.log ?? config.log.level);
  const ttlMs = config.conversations.idle_ttl_minutes * 60_000;

  let redis: Redis | undefined;
  if (config.redis.url) {
    redis = new Redis(config.redis.url, { maxRetriesPerRequest: 2, lazyConnect: true });
    redis.on('error', (err) => logger.warn({ err: err.message }, 'redis connection error'));
    await redis.connect();
  }
  const prefix = config.redis.prefix;

  let inference = options.inference;
  if (!inference && config.inference.mode === 'remote') {
    // Bots only enqueue: `curio worker` hosts run the model (src/inference/remote).
    inference = createRemoteInference({
      redisUrl: config.redis.url,
      prefix,
      maxQueue: config.inference.max_queue,
      jobTimeoutMs: config.inference.job_timeout_s * 1000,
      logger,
    });
  }
  if (!inference) inference = await createLocalInference(localInferenceOptions(config, logger));

  const modelName = 'info' in inference ? (inference as LocalInference).info.name : config.model.dir;
  // Every job and request is measured and logged, whichever adapter sent it.
  const metrics = new Metrics();
  inference = instrumentInference(inference, metrics);

  const perMinute = (b: { capacity: number; per_minute: number }) => ({ capacity: b.capacity, refillPerSecond: b.per_minute / 60 });
  const deps: CommandDeps = {
    inference,
    conversations: redis ? new RedisConversationStore(redis, { idleTtlMs: ttlMs, prefix }) : new MemoryConversationStore({ idleTtlMs: ttlMs }),
    images: redis ? new RedisImageStore(redis, { ttlMs, prefix }) : new MemoryImageStore({ maxBytes: 256 * MB, ttlMs }),
    limiter: redis ? new RedisRateLimiter(redis, prefix) : new MemoryRateLimiter(),
    results: redis ? new RedisResultCache(redis, { ttlMs: 24 * 3600_000, prefix }) : new MemoryResultCache({ max: 1000, ttlMs: 24 * 3600_000 }),
    access: config.access,
    limits: {
      maxTextLength: config.limits.max_text_chars,
      maxQuizRounds: config.limits.max_quiz_questions,
      perUser: perMinute(config.limits.per_user),
      perChannel: perMinute(config.limits.per_channel),
    },
    openConversations: config.conversations.open_to_all,
  };

  const client = inference;
  return {
    config,
    commands: new ObservedCommands(deps, { metrics, logger }),
    inference: client,
    redis,
    modelName,
    logger,
    metrics,
    async close() {
      await client.close();
      if (redis) await redis.quit().catch(() => redis!.disconnect());
    },
  };
}
