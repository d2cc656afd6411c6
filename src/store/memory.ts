/** In-process stores: the embedded default when no Redis is configured. */

import { LRUCache } from 'lru-cache';
import type { Conversation, ConversationStore, ImageStore } from '../core/conversation';
import type { ResultCache } from '../core/result-cache';
import type { JobResult } from '../inference/types';
import { takeFromBucket, bucketTtlMs, type BucketPolicy, type BucketState, type RateDecision, type RateLimiter } from '../core/rate-limit';

export class MemoryConversationStore implements ConversationStore {
  private readonly cache: LRUCache<string, Conversation>;

  constructor(options: { idleTtlMs: number; maxConversations?: number }) {
    this.cache = new LRUCache({ max: options.maxConversations ?? 10_000, ttl: options.idleTtlMs });
  }

  async get(id: string): Promise<Conversation | undefined> {
    const c = this.cache.get(id);
    return c && structuredClone(c);
  }

  async save(conversation: Conversation): Promise<void> {
    this.cache.set(conversation.id, structuredClone(conversation));
  }

  async delete(id: string): Promise<void> {
    this.cache.delete(id);
  }
}

export class MemoryImageStore implements ImageStore {
  private readonly cache: LRUCache<string, Uint8Array>;

  constructor(options: { maxBytes: number; ttlMs: number }) {
    this.cache = new LRUCache({ maxSize: options.maxBytes, sizeCalculation: (b) => Math.max(1, b.byteLength), ttl: options.ttlMs });
  }

  async get(digest: string): Promise<Uint8Array | undefined> {
    return this.cache.get(digest);
  }

  async put(digest: string, bytes: Uint8Array): Promise<void> {
    this.cache.set(digest, bytes);
  }
}

export class MemoryRateLimiter implements RateLimiter {
  private readonly buckets = new LRUCache<string, BucketState>({ max: 100_000 });

  constructor(private readonly now: () => number = Date.now) {}

  async take(key: string, policy: BucketPolicy, cost = 1): Promise<RateDecision> {
    const { state, decision } = takeFromBucket(this.buckets.get(key), policy, this.now(), cost);
    this.buckets.set(key, state, { ttl: bucketTtlMs(policy) });
    return decision;
  }
}

export class MemoryResultCache implements ResultCache {
  private readonly cache: LRUCache<string, JobResult>;

  constructor(options: { max: number; ttlMs: number }) {
    this.cache = new LRUCache({ max: options.max, ttl: options.ttlMs });
  }

  async get(key: string): Promise<JobResult | undefined> {
    const r = this.cache.get(key);
    return r && structuredClone(r);
  }

  async set(key: string, result: JobResult): Promise<void> {
    this.cache.set(key, structuredClone(result));
  }
}
