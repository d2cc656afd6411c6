/**
 * Pool sizing. Rule: on CPU, `workers × intraOpNumThreads ≤ cores` (oversubscribing costs ~20%,
 * runtime-findings §1) and every worker holds its own copy of the weights, so we prefer few
 * workers with many threads, and batching inside a worker, over many workers:
 *   - nothing given: 1 worker × all cores below 16 cores; 2 workers × cores/2 from 16 cores;
 *   - workers given: intraOpNumThreads = ⌊cores / workers⌋ (≥ 1);
 *   - intraOpNumThreads given: workers = max(1, ⌊cores / threads⌋), capped at 2 unless set;
 *   - both given and over the cores: kept, with a warning.
 * On GPU hosts (`device: 'cuda'`): one worker per GPU (`gpus`, default 1), worker i on GPU i;
 * the CPU threads are shared out the same way for the ops that stay on the CPU.
 */
import * as os from 'node:os';

export interface SizingInput {
  device?: 'cpu' | 'cuda';
  gpus?: number;
  workers?: number;
  intraOpNumThreads?: number;
  cores?: number;
}

export interface Sizing {
  workers: number;
  intraOpNumThreads: number;
  cores: number;
  warnings: string[];
}

export function planPool(o: SizingInput): Sizing {
  const cores = Math.max(1, o.cores ?? os.availableParallelism());
  const warnings: string[] = [];
  const posInt = (n: number | undefined, what: string) => {
    if (n !== undefined && (!Number.isInteger(n) || n < 1)) throw new Error(`${what} must be a positive integer (got ${n})`);
    return n;
  };
  let workers = posInt(o.workers, 'workers');
  let threads = posInt(o.intraOpNumThreads, 'intraOpNumThreads');
  const gpus = posInt(o.gpus, 'gpus');
  if (o.device === 'cuda') {
    if (workers !== undefined && gpus !== undefined && workers !== gpus) warnings.push(`device cuda: one worker per GPU, using ${gpus} (workers=${workers} ignored)`);
    workers = gpus ?? workers ?? 1;
    threads ??= Math.max(1, Math.floor(cores / workers));
  } else if (workers === undefined && threads === undefined) {
    workers = cores >= 16 ? 2 : 1;
    threads = Math.max(1, Math.floor(cores / workers));
  } else if (workers === undefined) {
    workers = Math.max(1, Math.min(2, Math.floor(cores / threads!)));
  } else if (threads === undefined) {
    threads = Math.max(1, Math.floor(cores / workers));
  }
  if (o.device !== 'cuda' && workers! * threads! > cores) {
    warnings.push(`workers × intraOpNumThreads = ${workers! * threads!} exceeds ${cores} cores: expect ~20% lost to oversubscription`);
  }
  return { workers: workers!, intraOpNumThreads: threads!, cores, warnings };
}
