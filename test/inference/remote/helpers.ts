/** Shared pieces of the remote (Redis queue) tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { InferenceClient, InferenceError, InferenceJob, JobEvent, JobResult } from '../../../src/inference';

export const ROOT = path.resolve(__dirname, '../../..');
export const BUNDLE = path.resolve(ROOT, 'test/fixtures/golden/bundle');
export const IMAGE = new Uint8Array(fs.readFileSync(path.resolve(ROOT, 'test/fixtures/golden/image.png')));
export const DIGEST = createHash('sha256').update(IMAGE).digest('hex');
export const N = 6;

let seq = 0;
export function job(over: Partial<InferenceJob> = {}): InferenceJob {
  seq++;
  const id = `t:${process.pid}:${seq}`;
  return { id, task: 'ask', image: { digest: DIGEST, bytes: IMAGE }, conversationId: `conv:${id}`, text: 'What is in the picture?', priority: 'interactive', maxNewTokens: N, ...over };
}

export interface Collected {
  events: JobEvent[];
  result: Promise<JobResult>;
  cancel: () => void;
  /** Resolves with the result or the error (never rejects). */
  settled: Promise<JobResult | InferenceError>;
}

export function collect(inf: { run: InferenceClient['run'] }, j: InferenceJob): Collected {
  const events: JobEvent[] = [];
  const h = inf.run(j, (e) => events.push(e));
  return { events, result: h.result, cancel: h.cancel, settled: h.result.then((r) => r, (e: InferenceError) => e) };
}

export function streamed(events: JobEvent[]): string {
  return events
    .filter((e) => e.type === 'token')
    .map((e) => (e as { text: string }).text)
    .join('');
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until(cond: () => boolean | Promise<boolean>, ms = 20000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A pool wrapper that holds each token back `ms` (a slow GPU): keeps jobs "mid-job" long enough to hurt them. */
export function slowed(inner: InferenceClient, ms: number): InferenceClient {
  return {
    run(j, onEvent) {
      let chain: Promise<unknown> = Promise.resolve();
      const h = inner.run(j, (ev) => {
        chain = chain.then(() => (ev.type === 'token' ? sleep(ms) : undefined)).then(() => onEvent(ev));
      });
      const result = h.result.then(
        async (r) => {
          await chain;
          return r;
        },
        async (e) => {
          await chain;
          throw e;
        },
      );
      result.catch(() => {});
      return { result, cancel: h.cancel };
    },
    stats: () => inner.stats(),
    close: () => inner.close(),
  };
}

/** A `curio worker`-like host in its own process (host-process.ts), to be SIGKILLed. */
export async function spawnHost(env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'host-process.ts')], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`host process exited early (${code})`)));
  });
  return child;
}
