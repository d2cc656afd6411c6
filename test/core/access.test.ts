import { checkAccess } from '../../src/core/access';
import { takeFromBucket } from '../../src/core/rate-limit';

describe('checkAccess', () => {
  it('allows everyone with no lists', () => {
    expect(checkAccess({}, { userId: 'u' })).toEqual({ allowed: true });
  });
  it('deny wins over allow', () => {
    const lists = { users: { allow: ['u'], deny: ['u'] } };
    expect(checkAccess(lists, { userId: 'u' })).toEqual({ allowed: false, reason: 'user' });
  });
  it('an allow list admits only its members; a thread matches through its parent channel', () => {
    const lists = { channels: { allow: ['c1'] } };
    expect(checkAccess(lists, { userId: 'u', channelIds: ['thread9', 'c1'] }).allowed).toBe(true);
    expect(checkAccess(lists, { userId: 'u', channelIds: ['c2'] })).toEqual({ allowed: false, reason: 'channel' });
  });
  it('checks roles and servers', () => {
    expect(checkAccess({ roles: { deny: ['muted'] } }, { userId: 'u', roleIds: ['a', 'muted'] })).toEqual({ allowed: false, reason: 'role' });
    expect(checkAccess({ servers: { allow: ['g1'] } }, { userId: 'u', serverId: 'g2' })).toEqual({ allowed: false, reason: 'server' });
  });
});

describe('takeFromBucket', () => {
  it('refills with time and caps at capacity', () => {
    const policy = { capacity: 2, refillPerSecond: 1 };
    let r = takeFromBucket(undefined, policy, 0);
    r = takeFromBucket(r.state, policy, 0);
    expect(r.state.tokens).toBe(0);
    const refused = takeFromBucket(r.state, policy, 500);
    expect(refused.decision).toEqual({ allowed: false, retryAfterMs: 500 });
    const later = takeFromBucket(refused.state, policy, 100_000);
    expect(later.decision.allowed).toBe(true);
    expect(later.state.tokens).toBe(1);
  });
});
