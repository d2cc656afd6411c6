import { loadConfig, ConfigError, PROJECT_ROOT } from '../../src/config';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

describe('loadConfig', () => {
  it('loads the documented defaults', () => {
    const c = loadConfig({ env: {} });
    expect(c.model.dir).toBe(path.join(PROJECT_ROOT, 'models/sq-llava-micro'));
    expect(c.model.device).toBe('cpu');
    expect(c.redis.url).toBe('');
    expect(c.limits.per_user).toEqual({ capacity: 5, per_minute: 5 });
  });

  it('applies a local file, then environment variables, then overrides', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'curio-config-'));
    const file = path.join(dir, 'curio.yaml');
    writeFileSync(file, 'inference:\n  workers: 2\n  max_queue: 5\nlog:\n  level: debug\n');
    const c = loadConfig({
      env: { CURIO_CONFIG: file, CURIO_INFERENCE__MAX_QUEUE: '7', REDIS_URL: 'redis://r:6379', CURIO_ACCESS__USERS__DENY: '[1, "2"]' },
      overrides: { log: { level: 'warn' } },
    });
    expect(c.inference.workers).toBe(2);
    expect(c.inference.max_queue).toBe(7);
    expect(c.redis.url).toBe('redis://r:6379');
    expect(c.access.users.deny).toEqual(['1', '2']);
    expect(c.log.level).toBe('warn');
  });

  it.each([
    [{ CURIO_MODEL__DEVICE: 'tpu' }, /model\.device: Invalid option: expected one of "cpu"\|"cuda"/],
    [{ CURIO_INFERENCE__WORKERS: 'many' }, /inference\.workers: Invalid input: expected number, received string/],
    [{ CURIO_LIMITS__PER_USER__CAPACITY: '-1' }, /limits\.per_user\.capacity: Too small/],
    [{ CURIO_MODEL__DTYPPE: 'fp16' }, /unknown setting model\.dtyppe/],
  ])('names the bad key and what it expected (%o)', (env, message) => {
    expect(() => loadConfig({ env })).toThrow(ConfigError);
    expect(() => loadConfig({ env })).toThrow(message);
  });

  it('reports an unreadable config file in one line', () => {
    expect(() => loadConfig({ env: { CURIO_CONFIG: '/nonexistent/curio.yaml' } })).toThrow('cannot read config file /nonexistent/curio.yaml: ENOENT');
  });
});
