/**
 * Discord rendering of Curio's replies: pure functions from core's `Reply` (and the queue and
 * progress states around it) to Discord message payloads. Discord limits that shape it: 2000
 * characters of content per message, spoilers (`||…||`) that only work inside one message,
 * buttons identified by a `custom_id` of at most 100 characters, and `-# ` subtext lines for
 * quiet footers.
 */
import { ButtonStyle, ComponentType, type APIActionRowComponent, type APIButtonComponentWithCustomId } from 'discord.js';
import type { Reply, ReplyStats } from '../../core/commands';
import { splitReply } from '../../core/split-reply';

/** Discord's limit on a message's content. */
export const DISCORD_MESSAGE_LIMIT = 2000;

export type ButtonRow = APIActionRowComponent<APIButtonComponentWithCustomId>;

/** One Discord message as Curio sends it (content and buttons; mentions are always disabled). */
export interface DiscordPayload {
  content: string;
  components: ButtonRow[];
}

export interface RenderOptions {
  /** A short line above the answer (the /ask question, "using the first of 3 images"). */
  header?: string;
  /** Quiz rounds that came before this reply ("another question" continues the numbering). */
  quizOffset?: number;
  /** Key of the conversation the reply belongs to, for the "Another question" button. */
  conversationKey?: string;
  /** Final reply: stats footer and buttons; otherwise a "writing" marker. */
  final?: { stats?: ReplyStats };
  limit?: number;
}

// ---- custom ids ------------------------------------------------------------------------------

export const REVEAL_ID = 'curio:reveal';
const MORE_PREFIX = 'curio:more:';

export function moreButtonId(conversationKey: string, roundsSoFar: number): string {
  return `${MORE_PREFIX}${roundsSoFar}:${conversationKey}`;
}

export function parseMoreButtonId(customId: string): { conversationKey: string; roundsSoFar: number } | undefined {
  if (!customId.startsWith(MORE_PREFIX)) return undefined;
  const rest = customId.slice(MORE_PREFIX.length);
  const colon = rest.indexOf(':');
  if (colon < 0) return undefined;
  const n = Number(rest.slice(0, colon));
  const key = rest.slice(colon + 1);
  if (!Number.isInteger(n) || n < 0 || !key) return undefined;
  return { conversationKey: key, roundsSoFar: n };
}

// ---- text ------------------------------------------------------------------------------------

/** Status while the job waits for (or starts on) a worker. */
export function statusText(state: { queued?: number; started?: boolean; header?: string }): string {
  const line =
    state.queued !== undefined && !state.started
      ? state.queued <= 1
        ? '⏳ Waiting in line — you are next.'
        : `⏳ Waiting in line — #${state.queued} in the queue.`
      : '🔎 Looking at the image…';
  return state.header ? `${state.header}\n${line}` : line;
}

export function footerText(stats: ReplyStats | undefined): string {
  if (!stats) return '';
  if (stats.cached) return '-# answered from cache';
  const secs = stats.totalMs / 1000;
  const time = secs < 10 ? secs.toFixed(1) : Math.round(secs).toString();
  const rate = stats.tokensPerSecond > 0 ? ` · ${stats.tokensPerSecond.toFixed(1)} tokens/s` : '';
  return `-# ${stats.tokens} tokens · ${time} s${rate}`;
}

/** A spoiler cannot contain `||` (it would close early). */
function spoiler(text: string): string {
  return `||${text.replace(/\|\|/g, '| |')}||`;
}

/** The reply as markdown, before splitting. Quiz answers are hidden as spoilers. */
export function replyMarkdown(reply: Reply, quizOffset = 0): string {
  if (reply.kind === 'answer') return reply.text;
  // Only the answers are hidden: a stray `||` elsewhere must not start a spoiler.
  const open = (t: string) => t.replace(/\|\|/g, '| |');
  const blocks: string[] = [];
  if (reply.description) blocks.push(open(reply.description));
  reply.rounds.forEach((r, i) => {
    const n = quizOffset + i + 1;
    let block = `**Q${n}.** ${open(r.question) || '…'}`;
    if (r.answer) block += `\n**A${n}.** ${spoiler(r.answer)}`;
    blocks.push(block);
  });
  return blocks.join('\n\n');
}

const SPOILER = /\|\|/g;

/** Keeps every message's spoilers closed: an odd `||` count is closed here and reopened next. */
function balanceSpoilers(parts: string[]): string[] {
  const out: string[] = [];
  let carry = false;
  for (let p of parts) {
    if (carry) p = `||${p}`;
    const open = (p.match(SPOILER) ?? []).length % 2 === 1;
    if (open) p = `${p}||`;
    carry = open;
    out.push(p);
  }
  return out;
}

/** Splits text into Discord messages at natural boundaries, code blocks and spoilers intact. */
export function splitForDiscord(text: string, limit = DISCORD_MESSAGE_LIMIT): string[] {
  // Room for a reopened/closed spoiler pair on each part.
  return balanceSpoilers(splitReply(text, { limit: limit - 4 }));
}

function buttons(list: APIButtonComponentWithCustomId[]): ButtonRow[] {
  return list.length ? [{ type: ComponentType.ActionRow, components: list }] : [];
}

const revealButton: APIButtonComponentWithCustomId = {
  type: ComponentType.Button,
  style: ButtonStyle.Secondary,
  custom_id: REVEAL_ID,
  label: 'Reveal answers',
  emoji: { name: '👀' },
};

function moreButton(key: string, roundsSoFar: number): APIButtonComponentWithCustomId {
  return { type: ComponentType.Button, style: ButtonStyle.Primary, custom_id: moreButtonId(key, roundsSoFar), label: 'Another question', emoji: { name: '❓' } };
}

const WRITING = '-# ✍️ writing…';

/**
 * The messages a reply occupies: the first carries the header, the last the footer (final) or
 * the "writing" marker (streaming). Final quiz replies get a "Reveal answers" button on each
 * message that hides answers and an "Another question" button on the last.
 */
export function renderReply(reply: Reply, o: RenderOptions = {}): DiscordPayload[] {
  const limit = o.limit ?? DISCORD_MESSAGE_LIMIT;
  let body = replyMarkdown(reply, o.quizOffset).trim();
  const empty = !body;
  if (empty) {
    body = !o.final ? '…' : reply.kind === 'quiz' && o.quizOffset ? '_(The model has no further question: this conversation is full. Start a new `/quiz`.)_' : '_(The model had nothing to say about this.)_';
  }
  const tail = o.final ? footerText(o.final.stats) : WRITING;
  // A one-part reply carries both the header and the footer.
  const reserve = (o.header ? o.header.length + 1 : 0) + (tail ? tail.length + 1 : 0);
  const parts = splitForDiscord(body, limit - reserve);
  if (o.header) parts[0] = `${o.header}\n${parts[0]}`;
  if (tail) parts[parts.length - 1] = `${parts[parts.length - 1]}\n${tail}`;

  const isQuiz = reply.kind === 'quiz';
  const roundsSoFar = (o.quizOffset ?? 0) + (isQuiz ? reply.rounds.length : 0);
  return parts.map((content, i) => {
    const list: APIButtonComponentWithCustomId[] = [];
    if (o.final && isQuiz) {
      if (/\|\|[\s\S]+?\|\|/.test(content)) list.push(revealButton);
      if (i === parts.length - 1 && o.conversationKey && !empty) list.push(moreButton(o.conversationKey, roundsSoFar));
    }
    return { content, components: buttons(list) };
  });
}

/** A short, single message (status, refusal, error). */
export function plain(content: string): DiscordPayload {
  return { content: content.length > DISCORD_MESSAGE_LIMIT ? content.slice(0, DISCORD_MESSAGE_LIMIT - 1) + '…' : content, components: [] };
}

/** "Reveal answers": the message with its spoilers shown openly (sent privately to whoever asked). */
export function revealText(content: string): string {
  if (!/\|\|[\s\S]+?\|\|/.test(content)) return 'There are no hidden answers in this message.';
  const open = content
    .split('\n')
    .filter((l) => !l.startsWith('-# '))
    .join('\n')
    .replace(/\|\|([\s\S]*?)\|\|/g, '$1');
  return plain(open).content;
}

/** A thread name from the start of the answer (Discord: 1–100 characters). */
export function threadName(reply: Reply, fallback: string): string {
  const text = (reply.kind === 'answer' ? reply.text : reply.description || reply.rounds[0]?.question || '')
    .replace(/[*_`|~>#\n]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  if (!text) return fallback;
  const words = text.split(' ');
  let name = '';
  for (const w of words) {
    if ((name + ' ' + w).trim().length > 60) break;
    name = (name + ' ' + w).trim();
  }
  if (!name) name = text.slice(0, 60);
  return `🖼️ ${name}${name.length < text.length ? '…' : ''}`;
}
