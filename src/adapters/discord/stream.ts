/**
 * Streaming a reply into Discord messages without tripping rate limits: the reply's latest
 * state is kept, and the visible messages are brought up to date at most once per interval
 * (1 s by default, as llmcord does). The final state is always delivered, after the last
 * intermediate edit has landed, so the last edit is the full answer.
 */
import type { DiscordPayload } from './render';

/** A list of Discord messages that show one reply (an interaction's reply and follow-ups, or
 * a bot message and the messages after it). */
export abstract class MessageList {
  private shown: string[] = [];

  protected abstract create(index: number, payload: DiscordPayload): Promise<void>;
  protected abstract edit(index: number, payload: DiscordPayload): Promise<void>;
  protected abstract remove(index: number): Promise<void>;

  /** Number of messages currently shown. */
  get count(): number {
    return this.shown.length;
  }

  /** Forget what is shown (after moving to other messages, e.g. a fallback channel). */
  protected reset(): void {
    this.shown = [];
  }

  /** Makes the messages show `payloads`: edits the changed ones, creates or removes the rest. */
  async sync(payloads: DiscordPayload[]): Promise<void> {
    for (let i = 0; i < payloads.length; i++) {
      const json = JSON.stringify(payloads[i]);
      if (this.shown[i] === json) continue;
      if (i < this.shown.length) await this.edit(i, payloads[i]);
      else await this.create(i, payloads[i]);
      this.shown[i] = json;
    }
    while (this.shown.length > payloads.length) {
      await this.remove(this.shown.length - 1);
      this.shown.pop();
    }
  }
}

export interface ThrottleOptions {
  /** Least time between two updates of the messages (ms). */
  intervalMs?: number;
  /** Called when an intermediate update fails (the next one retries from the latest state). */
  onError?: (err: unknown) => void;
  now?: () => number;
}

export class ThrottledReply {
  private desired: DiscordPayload[] | undefined;
  private version = 0;
  private flushedVersion = 0;
  private lastFlushAt = -Infinity;
  private inFlight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private finished = false;
  private readonly interval: number;
  private readonly now: () => number;
  /** Number of message updates sent (each may touch several messages). */
  updates = 0;

  constructor(
    private readonly target: MessageList,
    private readonly options: ThrottleOptions = {},
  ) {
    this.interval = options.intervalMs ?? 1000;
    this.now = options.now ?? Date.now;
  }

  /** The reply's latest state; shown at the next allowed moment (older states are skipped). */
  update(payloads: DiscordPayload[]): void {
    if (this.finished) return;
    this.desired = payloads;
    this.version++;
    this.schedule();
  }

  /** Delivers the final state (after any update in flight, respecting the interval). Throws if
   * the final update fails, so the caller can fall back. */
  async finish(payloads: DiscordPayload[]): Promise<void> {
    this.finished = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.desired = payloads;
    this.version++;
    while (this.inFlight) await this.inFlight.catch(() => undefined);
    const wait = this.lastFlushAt + this.interval - this.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await this.flush();
  }

  /** Stops intermediate updates (a failure is about to be shown instead). */
  async stop(): Promise<void> {
    this.finished = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.inFlight) await this.inFlight.catch(() => undefined);
  }

  private schedule(): void {
    if (this.inFlight || this.timer || this.finished) return;
    const wait = Math.max(0, this.lastFlushAt + this.interval - this.now());
    if (wait === 0) {
      this.startFlush();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.finished) this.startFlush();
    }, wait);
  }

  private startFlush(): void {
    const p = this.flush()
      .catch((err) => this.options.onError?.(err))
      .finally(() => {
        if (this.inFlight === p) this.inFlight = undefined;
        if (!this.finished && this.version !== this.flushedVersion) this.schedule();
      });
    this.inFlight = p;
  }

  private async flush(): Promise<void> {
    if (!this.desired || this.version === this.flushedVersion) return;
    const version = this.version;
    this.lastFlushAt = this.now();
    this.updates++;
    await this.target.sync(this.desired);
    this.flushedVersion = version;
  }
}
