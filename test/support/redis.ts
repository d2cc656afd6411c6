/**
 * A real redis-server for tests. Uses REDIS_TEST_URL when set (CI starts one), otherwise
 * starts a private server on a free port for this test file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

export interface TestRedis {
  url: string;
  /** A fresh client on its own logical database, flushed. */
  client(): Redis;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export async function startRedis(): Promise<TestRedis> {
  let child: ChildProcess | undefined;
  let url = process.env.REDIS_TEST_URL;
  if (!url) {
    const port = await freePort();
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    url = `redis://127.0.0.1:${port}`;
  }
  // Each test file gets its own database index so parallel jest workers don't collide.
  const db = child ? 0 : 1 + (Number(process.env.JEST_WORKER_ID ?? 1) % 15);
  const clients: Redis[] = [];
  let probe: Redis;
  for (let i = 0; ; i++) {
    probe = new Redis(url, { db, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
    try {
      await probe.connect();
      await probe.flushdb();
      break;
    } catch (err) {
      probe.disconnect();
      if (i > 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  clients.push(probe);
  return {
    url: `${url}/${db}`,
    client() {
      const c = new Redis(url!, { db, maxRetriesPerRequest: null });
      clients.push(c);
      return c;
    },
    async stop() {
      await Promise.all(clients.map((c) => c.quit().catch(() => c.disconnect())));
      child?.kill();
    },
  };
}
