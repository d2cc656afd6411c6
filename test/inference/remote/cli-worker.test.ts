/** `curio worker` as a process: serves the Redis queue, finishes its job on SIGTERM and exits 0. */
import { spawn } from 'node:child_process';
import * as path from 'node:path';

import { ConfigError, loadConfig } from '../../../src/config';
import { createRemoteInference } from '../../../src/inference/remote';
import { startRedis } from '../../support/redis';
import { BUNDLE, collect, job, ROOT, until } from './helpers';

jest.setTimeout(60000);

it('inference.mode remote needs a Redis URL', () => {
  expect(() => loadConfig({ env: { CURIO_INFERENCE__MODE: 'remote' } })).toThrow(ConfigError);
  expect(loadConfig({ env: { CURIO_INFERENCE__MODE: 'remote', REDIS_URL: 'redis://x:1' } }).inference.mode).toBe('remote');
  expect(() => loadConfig({ env: { CURIO_WORKER__HOST_ID: 'a/b' } })).toThrow(/worker.host_id/);
});

it('curio worker consumes the queue and stops cleanly on SIGTERM', async () => {
  const redis = await startRedis();
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/adapters/cli/main.ts'), 'worker', '--model', BUNDLE, '--host-id', 'cli-host'], {
    cwd: ROOT,
    env: { ...process.env, REDIS_URL: redis.url, CURIO_INFERENCE__WORKERS: '1', CURIO_INFERENCE__INTRA_OP_THREADS: '1', CURIO_LOG__LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const c = createRemoteInference({ redisUrl: redis.url, pollMs: 200 });
  try {
    await until(() => out.includes('curio worker ready'), 30000, `worker ready (output: ${out})`);
    expect(await c.hosts()).toEqual(['cli-host']);
    const res = await collect(c, job()).result;
    expect(res.worker).toBe('cli-host/w0');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(await c.hosts()).toEqual([]);
  } finally {
    child.kill('SIGKILL');
    await c.close();
    await redis.stop();
  }
});
