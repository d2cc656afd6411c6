/**
 * The operator's HTTP endpoint (config `http.host`/`http.port`, separate from the playground):
 *
 * - `GET /metrics`  Prometheus text format (see metrics.ts).
 * - `GET /healthz`  200 while the process serves HTTP at all (liveness: restart me if not).
 * - `GET /readyz`   200 when requests can be served: the model is loaded in at least one
 *                   inference worker (of this process, unless jobs go to remote workers) and
 *                   Redis (when configured) answers PING within a second;
 *                   otherwise 503 with a JSON body naming what is missing (readiness: route
 *                   traffic elsewhere, do not restart).
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { InferenceClient } from '../inference/types';
import type { Metrics } from './metrics';

export interface OpsServerOptions {
  host: string;
  port: number;
  metrics: Metrics;
  inference: InferenceClient;
  redis?: Redis;
  logger?: Logger;
  /** How long a Redis PING may take before the app counts as not ready (default 1000 ms). */
  redisTimeoutMs?: number;
  /**
   * Ready only with the model loaded in a worker of this process (default true). False for a
   * bot whose jobs go to remote `curio worker` hosts: it is ready when Redis is.
   */
  requireLocalWorkers?: boolean;
}

export interface OpsServer {
  name: string;
  url: string;
  server: Server;
  stop(): Promise<void>;
}

export interface Readiness {
  ready: boolean;
  checks: { model: { ok: boolean; workers: number; detail?: string }; redis?: { ok: boolean; detail?: string } };
}

async function pingRedis(redis: Redis, timeoutMs: number): Promise<{ ok: boolean; detail?: string }> {
  if (redis.status !== 'ready') return { ok: false, detail: `redis connection is ${redis.status}` };
  let timer: NodeJS.Timeout | undefined;
  try {
    const reply = await Promise.race([
      redis.ping(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no PING reply within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    return reply === 'PONG' ? { ok: true } : { ok: false, detail: `unexpected PING reply ${String(reply)}` };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  } finally {
    clearTimeout(timer);
  }
}

export async function readiness(inference: InferenceClient, redis: Redis | undefined, redisTimeoutMs = 1000, requireLocalWorkers = true): Promise<Readiness> {
  let workers = 0;
  let detail: string | undefined;
  let failed = false;
  try {
    workers = inference.stats().workers;
    if (workers === 0) detail = requireLocalWorkers ? 'no inference worker has the model loaded' : 'jobs go to remote workers';
  } catch (err) {
    failed = true;
    detail = `inference stats unavailable: ${(err as Error).message}`;
  }
  const model = { ok: !failed && (workers > 0 || !requireLocalWorkers), workers, ...(detail ? { detail } : {}) };
  const checks: Readiness['checks'] = { model };
  if (redis) checks.redis = await pingRedis(redis, redisTimeoutMs);
  return { ready: model.ok && (checks.redis?.ok ?? true), checks };
}

function send(res: ServerResponse, status: number, body: string, type = 'application/json'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

export async function startOpsServer(o: OpsServerOptions): Promise<OpsServer> {
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, JSON.stringify({ error: 'method not allowed' }));
    switch (url.pathname) {
      case '/metrics':
        return send(res, 200, await o.metrics.text(), o.metrics.contentType());
      case '/healthz':
        return send(res, 200, JSON.stringify({ status: 'ok', uptimeSeconds: Math.round(process.uptime()) }));
      case '/readyz': {
        const r = await readiness(o.inference, o.redis, o.redisTimeoutMs, o.requireLocalWorkers ?? true);
        if (!r.ready) o.logger?.warn({ checks: r.checks }, 'not ready');
        return send(res, r.ready ? 200 : 503, JSON.stringify({ status: r.ready ? 'ready' : 'not ready', ...r }));
      }
      default:
        return send(res, 404, JSON.stringify({ error: 'not found', endpoints: ['/metrics', '/healthz', '/readyz'] }));
    }
  };
  const server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      o.logger?.error({ err: err.message, path: req.url }, 'ops endpoint failed');
      if (!res.headersSent) send(res, 500, JSON.stringify({ error: 'internal error' }));
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  // once() rejects if 'error' (e.g. EADDRINUSE) comes first.
  await once(server.listen(o.port, o.host), 'listening');
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    name: 'http',
    url: `http://${host}:${addr.port}`,
    server,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
