/**
 * Pure rendering of Curio's replies as Slack messages (Block Kit): mrkdwn escaping, long text
 * split across section blocks (3000 characters each) and across messages (block and size
 * limits), quiz answers hidden behind "Reveal answer" buttons, an "Another question" button,
 * and the short status lines shown while a request waits or runs. No I/O here.
 */
import type { Reply, ReplyStats } from '../../core/commands';
import { splitReply } from '../../core/split-reply';

/** Slack's limit for a section block's text. */
export const SECTION_LIMIT = 3000;
/** Slack allows 50 blocks per message; keep a margin for the footer blocks. */
export const MAX_BLOCKS_PER_MESSAGE = 45;
/** Characters of text per message: Slack truncates `text` past 40k and long messages get
 * unwieldy long before; later parts go to further messages in the thread. */
export const MAX_CHARS_PER_MESSAGE = 12_000;
/** Slack's limit for a button's value. */
export const BUTTON_VALUE_LIMIT = 2000;
/** Notification/fallback text (`text` alongside `blocks`). */
const FALLBACK_LIMIT = 300;

export const ACTION_REVEAL = 'curio_reveal';
/** A quiz round that produced no question (the model ran out of context or stopped). */
export const NO_MORE_QUESTIONS = '_I couldn’t come up with another question — this conversation may be too long for the model. Start a new quiz with `/quiz`._';
export const ACTION_MORE = 'curio_more';

// Minimal Block Kit shapes (structurally compatible with @slack/types).
export interface TextObject {
  type: 'mrkdwn' | 'plain_text';
  text: string;
  emoji?: boolean;
}
export interface ButtonElement {
  type: 'button';
  action_id: string;
  text: TextObject;
  value: string;
  style?: 'primary' | 'danger';
}
export type Block =
  | { type: 'section'; text: TextObject; accessory?: ButtonElement }
  | { type: 'context'; elements: TextObject[] }
  | { type: 'actions'; elements: ButtonElement[] };

export interface SlackMessage {
  /** Fallback for notifications and clients without blocks. */
  text: string;
  blocks: Block[];
}

/** Escapes the three characters Slack's mrkdwn treats as control characters. Also defuses
 * `<!channel>`, `<@U…>` and link syntax in model output. */
export function escapeMrkdwn(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Cuts `text` to at most `max` characters (with an ellipsis), never inside a surrogate pair. */
export function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  let cut = max - 1;
  const code = text.charCodeAt(cut - 1);
  if (code >= 0xd800 && code <= 0xdbff) cut--;
  return text.slice(0, cut) + '…';
}

const section = (text: string): Block => ({ type: 'section', text: { type: 'mrkdwn', text } });
const context = (text: string): Block => ({ type: 'context', elements: [{ type: 'mrkdwn', text }] });

/** Escaped text as section blocks of at most SECTION_LIMIT characters each. Splitting happens
 * before escaping grows the text, so the limit is applied to the escaped result. */
export function textSections(text: string, limit = SECTION_LIMIT): Block[] {
  if (!text.trim()) return [];
  const out: Block[] = [];
  // Escaping can grow a part (& → &amp;): split with room to spare, then re-split what overflows.
  for (const part of splitReply(text, { limit: Math.max(64, Math.floor(limit * 0.8)) })) {
    const escaped = escapeMrkdwn(part);
    if (escaped.length <= limit) out.push(section(escaped));
    else for (const p of splitReply(part, { limit: Math.floor(limit / 5) })) out.push(section(truncate(escapeMrkdwn(p), limit)));
  }
  return out;
}

export interface RenderOptions {
  /** The reply is complete: show buttons and the footer. */
  final: boolean;
  /** Conversation key: carried by the quiz buttons. */
  conversationId: string;
  /** Shown above the reply (mrkdwn, already escaped), e.g. "<@U1> asked: …". */
  header?: string;
  /** Quiz rounds already shown in earlier messages ("Another question" numbering). */
  roundOffset?: number;
  stats?: ReplyStats;
  /** Model name for the footer. */
  model?: string;
}

export interface RevealValue {
  /** Round number (1-based). */
  n: number;
  /** The answer (possibly truncated to fit the button). */
  a: string;
}

export interface MoreValue {
  /** Conversation id. */
  c: string;
  /** Number of the next round. */
  n: number;
}

export function revealValue(n: number, answer: string): string {
  const base = JSON.stringify({ n, a: '' }).length;
  // JSON escaping may lengthen the answer; shrink until it fits.
  let budget = BUTTON_VALUE_LIMIT - base;
  for (;;) {
    const value = JSON.stringify({ n, a: truncate(answer, budget) } satisfies RevealValue);
    if (value.length <= BUTTON_VALUE_LIMIT) return value;
    budget -= value.length - BUTTON_VALUE_LIMIT + 8;
  }
}

export function parseRevealValue(value: string | undefined): RevealValue | undefined {
  try {
    const v = JSON.parse(value ?? '') as Partial<RevealValue>;
    return typeof v.n === 'number' && typeof v.a === 'string' ? { n: v.n, a: v.a } : undefined;
  } catch {
    return undefined;
  }
}

export function moreValue(conversationId: string, nextRound: number): string {
  return JSON.stringify({ c: conversationId, n: nextRound } satisfies MoreValue);
}

export function parseMoreValue(value: string | undefined): MoreValue | undefined {
  try {
    const v = JSON.parse(value ?? '') as Partial<MoreValue>;
    return typeof v.c === 'string' && typeof v.n === 'number' ? { c: v.c, n: v.n } : undefined;
  } catch {
    return undefined;
  }
}

function footer(o: RenderOptions): string | undefined {
  if (!o.final || !o.stats) return undefined;
  const s = o.stats;
  const bits = [o.model ? `Curio · ${escapeMrkdwn(o.model)}` : 'Curio'];
  if (s.cached) bits.push('cached answer');
  else {
    bits.push(`${(s.totalMs / 1000).toFixed(1)} s`);
    if (s.tokensPerSecond > 0) bits.push(`${s.tokensPerSecond.toFixed(1)} tokens/s`);
  }
  return bits.join(' · ');
}

/** The reply as one or more Slack messages (the first replaces the placeholder). */
export function renderReply(reply: Reply, o: RenderOptions): SlackMessage[] {
  const blocks: Block[] = [];
  if (o.header) blocks.push(context(o.header));
  let fallback: string;
  if (reply.kind === 'answer') {
    const body = textSections(reply.text);
    if (body.length === 0) blocks.push(section(o.final ? '_(no answer)_' : '_Thinking…_'));
    else {
      if (!o.final) appendCursor(body);
      blocks.push(...body);
    }
    fallback = reply.text || 'Curio is thinking…';
  } else {
    const offset = o.roundOffset ?? 0;
    blocks.push(...textSections(reply.description));
    reply.rounds.forEach((r, i) => {
      const n = offset + i + 1;
      if (!r.question) return;
      const q = truncate(`*Question ${n}:* ${escapeMrkdwn(r.question)}`, SECTION_LIMIT);
      // While streaming, answers stay hidden; the last round says when its answer is coming.
      const answering = !o.final && i === reply.rounds.length - 1 && r.answer.length > 0;
      if (o.final && r.answer) {
        blocks.push({
          type: 'section',
          text: { type: 'mrkdwn', text: q },
          accessory: { type: 'button', action_id: ACTION_REVEAL, text: { type: 'plain_text', text: 'Reveal answer' }, value: revealValue(n, r.answer) },
        });
      } else {
        blocks.push(section(answering ? `${q}\n_answering…_` : q));
      }
    });
    const empty = reply.rounds.every((r) => !r.question) && !reply.description;
    if (o.final && empty) blocks.push(section(NO_MORE_QUESTIONS));
    else if (empty) blocks.push(section('_Thinking…_'));
    else if (!o.final && reply.rounds.length === 0) appendCursor(blocks);
    if (o.final && !empty && reply.rounds.length > 0) {
      blocks.push({
        type: 'actions',
        elements: [
          {
            type: 'button',
            action_id: ACTION_MORE,
            text: { type: 'plain_text', text: 'Another question' },
            value: moreValue(o.conversationId, offset + reply.rounds.length + 1),
          },
        ],
      });
    }
    const firstQ = reply.rounds.find((r) => r.question)?.question;
    fallback = reply.description || (firstQ ? `Question ${offset + 1}: ${firstQ}` : 'Curio is thinking…');
  }
  const foot = footer(o);
  if (foot) blocks.push(context(foot));
  return pack(blocks, truncate(fallback, FALLBACK_LIMIT));
}

function appendCursor(blocks: Block[]): void {
  const last = blocks[blocks.length - 1];
  if (last?.type === 'section' && last.text.text.length < SECTION_LIMIT - 2) last.text = { ...last.text, text: last.text.text + ' …' };
}

function blockChars(b: Block): number {
  if (b.type === 'section') return b.text.text.length;
  if (b.type === 'context') return b.elements.reduce((n, e) => n + e.text.length, 0);
  return 0;
}

/** Packs blocks into messages under the block-count and size limits. The fallback text goes on
 * the first message; later ones say which part they are. */
export function pack(blocks: Block[], fallback: string, maxBlocks = MAX_BLOCKS_PER_MESSAGE, maxChars = MAX_CHARS_PER_MESSAGE): SlackMessage[] {
  const messages: Block[][] = [[]];
  let chars = 0;
  for (const b of blocks) {
    const cur = messages[messages.length - 1];
    const size = blockChars(b);
    // Buttons and the footer stay with the text they belong to.
    const small = b.type !== 'section';
    if (cur.length > 0 && (cur.length >= maxBlocks || (!small && chars + size > maxChars))) {
      messages.push([b]);
      chars = size;
    } else {
      cur.push(b);
      chars += size;
    }
  }
  return messages.map((bs, i) => ({ text: i === 0 ? fallback : `(continued, part ${i + 1})`, blocks: bs }));
}

/** One-line status messages (placeholder, queue, refusals, errors). */
export function renderStatus(kind: 'working' | 'queued' | 'error' | 'notice', text?: string, header?: string): SlackMessage {
  let body: string;
  if (kind === 'working') body = '_Looking at the image…_';
  else if (kind === 'queued') body = `_Waiting in line: ${text}_`;
  else if (kind === 'error') body = `:warning: ${escapeMrkdwn(text ?? 'Something went wrong.')}`;
  else body = escapeMrkdwn(text ?? '');
  const blocks: Block[] = [];
  if (header) blocks.push(context(header));
  blocks.push(section(body));
  return { text: kind === 'error' || kind === 'notice' ? (text ?? '') : kind === 'queued' ? `Waiting in line: ${text}` : 'Looking at the image…', blocks };
}

export function queuePosition(position: number): string {
  return position <= 1 ? 'you are next' : `#${position} in the queue`;
}
