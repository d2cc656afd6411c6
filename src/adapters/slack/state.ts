/**
 * The Slack adapter's own small state: which events were already handled (Slack retries an
 * event it thinks we missed, with the same event id and `X-Slack-Retry-Num`), and which threads
 * Curio answered in (so a reply in any other thread is ignored without touching rate limits).
 * In memory for one process; in Redis (SET NX with a TTL) when several bot processes share
 * the work.
 */
import { LRUCache } from 'lru-cache';
import type { Redis } from 'ioredis';

export interface EventDeduper {
  /** True the first time `key` is seen (within the TTL): the caller handles it; false after. */
  claim(key: string): Promise<boolean>;
}

export interface ThreadRegistry {
  /** Remembers that Curio answered in this conversation (thread). */
  add(conversationId: string): Promise<void>;
  has(conversationId: string): Promise<boolean>;
}

export interface StateLogger {
  warn(obj: object, msg: string): void;
}

/** Slack retries for up to about an hour; remembering ids for two covers every retry. */
export const DEDUPE_TTL_MS = 2 * 3600_000;

export class MemoryEventDeduper implements EventDeduper {
  private readonly seen: LRUCache<string, true>;

  constructor(options: { ttlMs?: number; max?: number } = {}) {
    this.seen = new LRUCache({ max: options.max ?? 50_000, ttl: options.ttlMs ?? DEDUPE_TTL_MS });
  }

  async claim(key: string): Promise<boolean> {
    if (this.seen.has(key)) return false;
    this.seen.set(key, true);
    return true;
  }
}

export class RedisEventDeduper implements EventDeduper {
  constructor(
    private readonly redis: Redis,
    private readonly options: { prefix: string; ttlMs?: number; logger?: StateLogger },
  ) {}

  async claim(key: string): Promise<boolean> {
    try {
      const ok = await this.redis.set(`${this.options.prefix}:slack:event:${key}`, '1', 'PX', this.options.ttlMs ?? DEDUPE_TTL_MS, 'NX');
      return ok === 'OK';
    } catch (err) {
      // Fail open: answering a retry twice is better than never answering.
      this.options.logger?.warn({ err: (err as Error).message }, 'slack dedupe: redis unavailable, handling the event');
      return true;
    }
  }
}

export class MemoryThreadRegistry implements ThreadRegistry {
  private readonly threads: LRUCache<string, true>;

  constructor(options: { ttlMs: number; max?: number }) {
    this.threads = new LRUCache({ max: options.max ?? 100_000, ttl: options.ttlMs, updateAgeOnHas: false });
  }

  async add(conversationId: string): Promise<void> {
    this.threads.set(conversationId, true);
  }

  async has(conversationId: string): Promise<boolean> {
    return this.threads.has(conversationId);
  }
}

export class RedisThreadRegistry implements ThreadRegistry {
  constructor(
    private readonly redis: Redis,
    private readonly options: { prefix: string; ttlMs: number; logger?: StateLogger },
  ) {}

  private key(id: string) {
    return `${this.options.prefix}:slack:thread:${id}`;
  }

  async add(conversationId: string): Promise<void> {
    try {
      await this.redis.set(this.key(conversationId), '1', 'PX', this.options.ttlMs);
    } catch (err) {
      this.options.logger?.warn({ err: (err as Error).message }, 'slack threads: redis unavailable');
    }
  }

  async has(conversationId: string): Promise<boolean> {
    try {
      return (await this.redis.exists(this.key(conversationId))) === 1;
    } catch (err) {
      this.options.logger?.warn({ err: (err as Error).message }, 'slack threads: redis unavailable');
      return false;
    }
  }
}
