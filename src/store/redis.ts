/**
 * Redis-backed stores, used when REDIS_URL is set: every bot process sees the same
 * conversations and rate limits, and a restart loses nothing.
 */

import type { Redis } from 'ioredis';
import type { Conversation, ConversationStore, ImageStore } from '../core/conversation';
import type { ResultCache } from '../core/result-cache';
import type { JobResult } from '../inference/types';
import { bucketTtlMs, type BucketPolicy, type RateDecision, type RateLimiter } from '../core/rate-limit';

export class RedisConversationStore implements ConversationStore {
  constructor(
    private readonly redis: Redis,
    private readonly options: { idleTtlMs: number; prefix?: string },
  ) {}

  private key(id: string): string {
    return `${this.options.prefix ?? 'curio'}:conv:${id}`;
  }

  async get(id: string): Promise<Conversation | undefined> {
    const raw = await this.redis.get(this.key(id));
    return raw ? (JSON.parse(raw) as Conversation) : undefined;
  }

  async save(conversation: Conversation): Promise<void> {
    await this.redis.set(this.key(conversation.id), JSON.stringify(conversation), 'PX', this.options.idleTtlMs);
  }

  async delete(id: string): Promise<void> {
    await this.redis.del(this.key(id));
  }
}

export class RedisImageStore implements ImageStore {
  constructor(
    private readonly redis: Redis,
    private readonly options: { ttlMs: number; prefix?: string },
  ) {}

  private key(digest: string): string {
    return `${this.options.prefix ?? 'curio'}:img:${digest}`;
  }

  async get(digest: string): Promise<Uint8Array | undefined> {
    const buf = await this.redis.getBuffer(this.key(digest));
    if (!buf) return undefined;
    await this.redis.pexpire(this.key(digest), this.options.ttlMs);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  async put(digest: string, bytes: Uint8Array): Promise<void> {
    await this.redis.set(this.key(digest), Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), 'PX', this.options.ttlMs);
  }
}

/**
 * The same arithmetic as `takeFromBucket`, atomically in Redis (one script call per request;
 * Redis's own clock so bot hosts with skewed clocks agree).
 */
const TAKE_SCRIPT = `
local key = KEYS[1]
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', key, 'tokens', 'updatedAt')
local tokens = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
local elapsed = math.max(0, now - updated) / 1000
tokens = math.min(capacity, tokens + elapsed * rate)
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
else
  retry = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'updatedAt', tostring(now))
redis.call('PEXPIRE', key, ttl)
return retry
`;

export class RedisRateLimiter implements RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = 'curio',
  ) {
    if (!('curioTakeToken' in redis)) redis.defineCommand('curioTakeToken', { numberOfKeys: 1, lua: TAKE_SCRIPT });
  }

  async take(key: string, policy: BucketPolicy, cost = 1): Promise<RateDecision> {
    const run = (this.redis as unknown as { curioTakeToken(...args: Array<string | number>): Promise<number> }).curioTakeToken;
    const retryAfterMs = await run.call(this.redis, `${this.prefix}:rate:${key}`, policy.capacity, policy.refillPerSecond, cost, bucketTtlMs(policy));
    return retryAfterMs > 0 ? { allowed: false, retryAfterMs } : { allowed: true };
  }
}

export class RedisResultCache implements ResultCache {
  constructor(
    private readonly redis: Redis,
    private readonly options: { ttlMs: number; prefix?: string },
  ) {}

  private key(k: string): string {
    return `${this.options.prefix ?? 'curio'}:result:${k}`;
  }

  async get(key: string): Promise<JobResult | undefined> {
    const raw = await this.redis.get(this.key(key));
    return raw ? (JSON.parse(raw) as JobResult) : undefined;
  }

  async set(key: string, result: JobResult): Promise<void> {
    await this.redis.set(this.key(key), JSON.stringify(result), 'PX', this.options.ttlMs);
  }
}
