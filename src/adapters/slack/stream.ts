/**
 * A reply that grows in place: the first message is posted (the placeholder), then edited with
 * `chat.update` at most once per `minIntervalMs` while tokens stream, and always once more with
 * the complete answer. A reply longer than one message continues in further messages in the
 * same thread, each edited the same way. Calls go out one at a time, in order.
 */
import type { WebClient } from '@slack/web-api';
import type { SlackMessage } from './render';

export interface StreamLogger {
  warn(obj: object, msg: string): void;
}

export interface StreamOptions {
  channel: string;
  /** Thread to post in; without it the first message starts a new thread. */
  threadTs?: string;
  minIntervalMs: number;
  logger?: StreamLogger;
  now?: () => number;
}

export class StreamedReply {
  private readonly posted: string[] = [];
  private readonly shown: string[] = [];
  private pending?: SlackMessage[];
  private timer?: NodeJS.Timeout;
  private lastFlush = -Infinity;
  private chain: Promise<void> = Promise.resolve();
  private finished = false;
  private readonly now: () => number;

  constructor(
    private readonly client: WebClient,
    private readonly options: StreamOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** Ts of the first message (the thread root when no thread was given). */
  get firstTs(): string | undefined {
    return this.posted[0];
  }

  get threadTs(): string | undefined {
    return this.options.threadTs ?? this.posted[0];
  }

  get hasPosted(): boolean {
    return this.posted.length > 0;
  }

  /** Shows `messages` now (placeholder, status lines); waits for the Web API; rejects when
   * the first message cannot be posted. */
  async show(messages: SlackMessage[]): Promise<void> {
    this.cancelTimer();
    this.pending = undefined;
    await this.enqueue(messages);
  }

  /** Streams `messages` (the reply so far): sent now or within `minIntervalMs`, newest wins. */
  update(messages: SlackMessage[]): void {
    if (this.finished) return;
    this.pending = messages;
    if (this.timer) return;
    const wait = this.lastFlush + this.options.minIntervalMs - this.now();
    if (wait <= 0) this.flushPending();
    else this.timer = setTimeout(() => this.flushPending(), wait);
  }

  /** The final content: always sent, after anything already in flight. */
  async finish(messages: SlackMessage[]): Promise<void> {
    this.finished = true;
    this.cancelTimer();
    this.pending = undefined;
    await this.enqueue(messages, true);
  }

  /** Deletes what was posted (a refusal after the placeholder went out). */
  async discard(): Promise<void> {
    this.finished = true;
    this.cancelTimer();
    this.pending = undefined;
    await this.chain;
    for (const ts of this.posted.splice(0)) {
      await this.client.chat.delete({ channel: this.options.channel, ts }).catch((err: unknown) => this.warn(err, 'chat.delete failed'));
    }
  }

  /** Settles when every queued call is done. */
  idle(): Promise<void> {
    return this.chain;
  }

  private cancelTimer() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private flushPending() {
    this.timer = undefined;
    const messages = this.pending;
    this.pending = undefined;
    if (messages) this.enqueue(messages).catch(() => undefined); // logged in send()
  }

  private enqueue(messages: SlackMessage[], final = false): Promise<void> {
    const run = this.chain.then(() => this.send(messages, final));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async send(messages: SlackMessage[], final: boolean): Promise<void> {
    this.lastFlush = this.now();
    const { channel } = this.options;
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i];
      const json = JSON.stringify(m);
      try {
        if (i >= this.posted.length) {
          const res = await this.client.chat.postMessage({
            channel,
            ...(this.threadTs ? { thread_ts: this.threadTs } : {}),
            text: m.text,
            blocks: m.blocks as never,
            unfurl_links: false,
            unfurl_media: false,
          });
          if (!res.ts) throw new Error('chat.postMessage returned no ts');
          this.posted.push(res.ts);
        } else if (this.shown[i] !== json) {
          await this.client.chat.update({ channel, ts: this.posted[i], text: m.text, blocks: m.blocks as never });
        }
        this.shown[i] = json;
      } catch (err) {
        this.warn(err, i >= this.posted.length ? 'chat.postMessage failed' : 'chat.update failed');
        // A streamed update may be dropped (the next one carries everything); the first post
        // and the final content may not.
        if (final || this.posted.length === 0) throw err;
        return;
      }
    }
    // The reply shrank (an error replaced a long partial answer): remove the extra messages.
    if (final) {
      for (const ts of this.posted.splice(messages.length)) {
        await this.client.chat.delete({ channel, ts }).catch((err: unknown) => this.warn(err, 'chat.delete failed'));
      }
      this.shown.length = messages.length;
    }
  }

  private warn(err: unknown, msg: string) {
    const code = (err as { data?: { error?: string } }).data?.error ?? (err as Error).message;
    this.options.logger?.warn({ err: code, channel: this.options.channel }, msg);
  }
}
