/**
 * piscina worker entry: loads the model bundle once at start (kept for the worker's life) and
 * serves jobs with src/inference/worker-core.ts. Run from TypeScript with
 * `execArgv: ['--import', 'tsx']` (the client does this when it runs from .ts sources).
 *
 * Worker index: piscina has no per-worker data, so each worker claims the first free slot of a
 * SharedArrayBuffer in workerData (compare-exchange with its threadId); the client frees the
 * slots of workers that died, so a replacement takes over the same index — and, with
 * `device: 'cuda'`, the same GPU (`deviceId` = slot).
 */
import { BroadcastChannel, threadId, workerData } from 'node:worker_threads';

import { Engine } from '../src/model';
import type { LifecycleMessage, WorkerData, WorkerRequest } from '../src/inference/protocol';
import { createWorkerHandler, WorkerHandler } from '../src/inference/worker-core';

const data = workerData as WorkerData;

function claimSlot(buf: SharedArrayBuffer): number {
  const a = new Int32Array(buf);
  const n = a.length - 1;
  const until = Date.now() + 15000;
  for (;;) {
    for (let i = 0; i < n; i++) if (Atomics.compareExchange(a, i, 0, threadId) === 0) return i;
    if (Date.now() > until) return n + threadId; // no free slot (should not happen): a unique name anyway
    // Wait for the client to free the slot of a worker that died.
    Atomics.wait(a, n, Atomics.load(a, n), 100);
  }
}

const slot = claimSlot(data.slots);
const name = `${data.host}/w${slot}`;
const channel = new BroadcastChannel(data.channel);
channel.unref();

const handlerReady: Promise<WorkerHandler | Error> = (async () => {
  const t0 = performance.now();
  try {
    const engine = await Engine.load(data.bundleDir, {
      ...data.engine,
      ...(data.engine.device === 'cuda' ? { deviceId: slot } : {}),
    });
    const handler = createWorkerHandler(engine, { name, maxBatch: data.maxBatch });
    channel.postMessage({ type: 'ready', worker: name, slot, threadId, info: engine.info, loadMs: performance.now() - t0 } satisfies LifecycleMessage);
    return handler;
  } catch (err) {
    channel.postMessage({ type: 'load_error', worker: name, message: (err as Error).message } satisfies LifecycleMessage);
    return err as Error;
  }
})();

export default async function inferenceWorker(req: WorkerRequest): Promise<unknown> {
  const h = await handlerReady;
  if (h instanceof Error) {
    if (req.kind === 'job') req.port.close();
    return { ok: false, error: { code: 'unavailable', message: 'The model could not be loaded.' }, stats: { worker: name, batches: { steps: 0, sequences: 0, histogram: {}, maxBatch: 0 } } };
  }
  return h(req);
}
