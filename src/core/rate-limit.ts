/**
 * Token-bucket rate limits per user and per channel. The bucket arithmetic is one pure
 * function shared by the in-memory limiter and the Redis one (whose Lua script mirrors it),
 * so both behave identically.
 */

export interface BucketPolicy {
  /** Requests allowed in a burst. */
  capacity: number;
  /** Tokens added back per second. */
  refillPerSecond: number;
}

export interface BucketState {
  tokens: number;
  updatedAt: number; // ms
}

export type RateDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

export interface RateLimiter {
  /** Takes `cost` tokens from the bucket `key` if it has them. */
  take(key: string, policy: BucketPolicy, cost?: number): Promise<RateDecision>;
}

export function takeFromBucket(
  state: BucketState | undefined,
  policy: BucketPolicy,
  now: number,
  cost = 1,
): { state: BucketState; decision: RateDecision } {
  const previous = state ?? { tokens: policy.capacity, updatedAt: now };
  const elapsed = Math.max(0, now - previous.updatedAt) / 1000;
  const tokens = Math.min(policy.capacity, previous.tokens + elapsed * policy.refillPerSecond);
  if (tokens >= cost) {
    return { state: { tokens: tokens - cost, updatedAt: now }, decision: { allowed: true } };
  }
  const retryAfterMs = Math.ceil(((cost - tokens) / policy.refillPerSecond) * 1000);
  return { state: { tokens, updatedAt: now }, decision: { allowed: false, retryAfterMs } };
}

/** Milliseconds until a bucket refills completely: how long its state is worth keeping. */
export function bucketTtlMs(policy: BucketPolicy): number {
  return Math.ceil((policy.capacity / policy.refillPerSecond) * 1000) + 1000;
}
