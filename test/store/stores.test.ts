import type { Conversation, ConversationStore, ImageStore } from '../../src/core/conversation';
import type { RateLimiter } from '../../src/core/rate-limit';
import { MemoryConversationStore, MemoryImageStore, MemoryRateLimiter } from '../../src/store/memory';
import { RedisConversationStore, RedisImageStore, RedisRateLimiter } from '../../src/store/redis';
import { startRedis, type TestRedis } from '../support/redis';

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

const conversation = (id: string): Conversation => ({
  id,
  imageDigest: 'ab'.repeat(32),
  template: 'v1',
  turns: [
    { role: 'USER', text: 'What color is the star?' },
    { role: 'ASSISTANT', text: 'The star is red.' },
  ],
  ownerId: 'u1',
  openToAll: true,
  createdAt: 1,
  updatedAt: 2,
});

const stores: Array<[string, (ttl: number) => ConversationStore]> = [
  ['memory', (ttl) => new MemoryConversationStore({ idleTtlMs: ttl })],
  ['redis', (ttl) => new RedisConversationStore(redis.client(), { idleTtlMs: ttl })],
];

describe.each(stores)('%s conversation store', (_name, make) => {
  it('saves, returns a copy, and deletes', async () => {
    const store = make(60_000);
    const c = conversation('t1');
    await store.save(c);
    const got = await store.get('t1');
    expect(got).toEqual(c);
    got!.turns.push({ role: 'USER', text: 'changed' });
    expect((await store.get('t1'))!.turns).toHaveLength(2);
    await store.delete('t1');
    expect(await store.get('t1')).toBeUndefined();
  });

  it('expires a conversation after its idle time, and saving renews it', async () => {
    // Generous margins: the suite runs on busy shared CPUs.
    const store = make(1500);
    await store.save(conversation('t2'));
    await new Promise((r) => setTimeout(r, 900));
    await store.save(conversation('t2')); // activity renews
    await new Promise((r) => setTimeout(r, 900));
    expect(await store.get('t2')).toBeDefined(); // 1.8 s after creation, 0.9 s after renewal
    await new Promise((r) => setTimeout(r, 1700));
    expect(await store.get('t2')).toBeUndefined();
  });
});

const imageStores: Array<[string, () => ImageStore]> = [
  ['memory', () => new MemoryImageStore({ maxBytes: 1 << 20, ttlMs: 60_000 })],
  ['redis', () => new RedisImageStore(redis.client(), { ttlMs: 60_000 })],
];

describe.each(imageStores)('%s image store', (_name, make) => {
  it('round-trips binary bytes exactly', async () => {
    const store = make();
    const bytes = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7919) % 256);
    await store.put('d1', bytes);
    expect(Buffer.from((await store.get('d1'))!)).toEqual(Buffer.from(bytes));
    expect(await store.get('missing')).toBeUndefined();
  });
});

const limiters: Array<[string, () => RateLimiter]> = [
  ['memory', () => new MemoryRateLimiter()],
  ['redis', () => new RedisRateLimiter(redis.client(), `t${Date.now()}`)],
];

describe.each(limiters)('%s rate limiter', (_name, make) => {
  it('allows a burst up to capacity, then says how long to wait, then refills', async () => {
    const limiter = make();
    const policy = { capacity: 3, refillPerSecond: 10 };
    for (let i = 0; i < 3; i++) expect(await limiter.take('user:1', policy)).toEqual({ allowed: true });
    const refused = await limiter.take('user:1', policy);
    expect(refused.allowed).toBe(false);
    if (!refused.allowed) {
      expect(refused.retryAfterMs).toBeGreaterThan(0);
      expect(refused.retryAfterMs).toBeLessThanOrEqual(100);
    }
    expect(await limiter.take('user:2', policy)).toEqual({ allowed: true }); // buckets are per key
    await new Promise((r) => setTimeout(r, 150));
    expect(await limiter.take('user:1', policy)).toEqual({ allowed: true });
  });
});

it('two Redis limiters (two bot processes) share one bucket', async () => {
  const prefix = `shared${Date.now()}`;
  const a = new RedisRateLimiter(redis.client(), prefix);
  const b = new RedisRateLimiter(redis.client(), prefix);
  const policy = { capacity: 2, refillPerSecond: 0.01 };
  expect((await a.take('u', policy)).allowed).toBe(true);
  expect((await b.take('u', policy)).allowed).toBe(true);
  expect((await a.take('u', policy)).allowed).toBe(false);
  expect((await b.take('u', policy)).allowed).toBe(false);
});
