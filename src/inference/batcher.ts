/**
 * Continuous batching inside one inference worker.
 *
 * Every in-flight generation runs its own `generate()` loop and calls `decodeStep([seq])` once
 * per token. `BatchingRunner` stands in for the ModelRunner in the task context and coalesces
 * the single-sequence decode steps that arrive within one turn of the event loop into a single
 * `ModelRunner.decodeStep([...all])` (left-padded batch). When a batch resolves, each waiting
 * generation samples its next token and calls `decodeStep` again in the same microtask flush, so
 * all of them meet in the next batch; a generation that has just finished its prefill joins at
 * the next step, and a finished one simply stops calling. Prefills are not batched (different
 * lengths) and run between steps.
 */
import type { ModelRunner, Sequence } from '../model';

interface Waiter {
  seq: Sequence;
  resolve: (logits: Float32Array) => void;
  reject: (err: unknown) => void;
}

export interface BatchStats {
  /** Decoder steps run (each one batch). */
  steps: number;
  /** Sequence-steps (sum of batch sizes). */
  sequences: number;
  /** batch size → number of steps of that size. */
  histogram: Record<number, number>;
  maxBatch: number;
}

export class BatchingRunner {
  private waiting: Waiter[] = [];
  private scheduled = false;
  private running = false;
  readonly stats: BatchStats = { steps: 0, sequences: 0, histogram: {}, maxBatch: 0 };

  constructor(
    private readonly runner: ModelRunner,
    /** Largest batch per step (memory for padded caches grows with it). */
    private readonly maxBatch = 16,
  ) {}

  get maxPositions(): number {
    return this.runner.maxPositions;
  }
  get hidden(): number {
    return this.runner.hidden;
  }
  get layers(): number {
    return this.runner.layers;
  }

  prefill(seq: Sequence): Promise<Float32Array> {
    return this.runner.prefill(seq);
  }

  /** Queues the sequences for the next batched step; resolves with their logits. */
  decodeStep(seqs: readonly Sequence[]): Promise<Float32Array[]> {
    return Promise.all(
      seqs.map(
        (seq) =>
          new Promise<Float32Array>((resolve, reject) => {
            this.waiting.push({ seq, resolve, reject });
            this.schedule();
          }),
      ),
    );
  }

  private schedule(): void {
    if (this.scheduled || this.running) return;
    this.scheduled = true;
    // setImmediate: after every microtask of the previous batch's continuations has run, so all
    // generations that were in that batch have queued their next step.
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.running || this.waiting.length === 0) return;
    this.running = true;
    const batch = this.waiting.splice(0, this.maxBatch);
    const B = batch.length;
    this.stats.steps++;
    this.stats.sequences += B;
    this.stats.histogram[B] = (this.stats.histogram[B] ?? 0) + 1;
    this.stats.maxBatch = Math.max(this.stats.maxBatch, B);
    try {
      const logits = await this.runner.decodeStep(batch.map((w) => w.seq));
      batch.forEach((w, i) => w.resolve(logits[i]));
    } catch (err) {
      // One bad sequence (e.g. context full) must not fail the others: retry them one by one.
      if (B === 1) batch[0].reject(err);
      else {
        for (const w of batch) {
          try {
            w.resolve((await this.runner.decodeStep([w.seq]))[0]);
          } catch (e) {
            w.reject(e);
          }
        }
      }
    } finally {
      this.running = false;
      if (this.waiting.length) this.schedule();
    }
  }
}
