/**
 * What a Slack user asked for, from slash-command text or a message mentioning the bot.
 * Pure functions.
 */
import { extractLink } from './images';

export type Intent =
  | { command: 'describe'; detail: 'brief' | 'detailed' }
  | { command: 'ask'; text: string }
  | { command: 'quiz'; rounds?: number };

export type SlashName = 'describe' | 'ask' | 'quiz';

export const USAGE: Record<SlashName, string> = {
  describe: 'Usage: `/describe [detailed] [image link]` — describes your most recent image in this channel, or the linked one.',
  ask: 'Usage: `/ask <question> [image link]` — answers a question about your most recent image in this channel, or the linked one.',
  quiz: 'Usage: `/quiz [number of questions] [image link]` — Curio asks itself questions about your most recent image and answers them.',
};

/** Removes `<@BOT>` mentions (and the spaces around them). */
export function stripMention(text: string, botUserId?: string): string {
  const re = botUserId ? new RegExp(`<@${botUserId}(?:\\|[^>]*)?>`, 'g') : /<@[UW][A-Z0-9]+(?:\|[^>]*)?>/g;
  return text.replace(re, ' ').replace(/\s+/g, ' ').trim();
}

export function mentions(text: string | undefined, botUserId: string | undefined): boolean {
  return !!text && !!botUserId && new RegExp(`<@${botUserId}(?:\\|[^>]*)?>`).test(text);
}

const DETAIL = /\b(detail(ed)?|in detail|long)\b/i;

/** A mention's text: nothing or "describe" → describe; "quiz [n]" → quiz; anything else is a question. */
export function parseMention(text: string): Intent {
  const t = text.trim();
  if (!t) return { command: 'describe', detail: 'brief' };
  const describe = /^\/?describe\b\s*(.*)$/i.exec(t);
  if (describe) return { command: 'describe', detail: DETAIL.test(describe[1]) ? 'detailed' : 'brief' };
  const quiz = /^\/?quiz(?:\s+me)?(?:\s+(\d+))?\s*$/i.exec(t);
  if (quiz) return { command: 'quiz', ...(quiz[1] ? { rounds: Number(quiz[1]) } : {}) };
  const ask = /^\/?ask\s+(.+)$/is.exec(t);
  return { command: 'ask', text: ask ? ask[1].trim() : t };
}

export type SlashParse = { ok: true; intent: Intent; url?: string } | { ok: false; message: string };

/** A slash command's text (`command.text`): an optional image link plus the command's own arguments. */
export function parseSlash(name: SlashName, text: string): SlashParse {
  const { url, rest } = extractLink(text ?? '');
  if (name === 'describe') {
    if (rest && !DETAIL.test(rest) && !/^brief$/i.test(rest)) return { ok: false, message: USAGE.describe };
    return { ok: true, url, intent: { command: 'describe', detail: DETAIL.test(rest) ? 'detailed' : 'brief' } };
  }
  if (name === 'ask') {
    if (!rest) return { ok: false, message: USAGE.ask };
    return { ok: true, url, intent: { command: 'ask', text: rest } };
  }
  if (!rest) return { ok: true, url, intent: { command: 'quiz' } };
  if (!/^\d{1,3}$/.test(rest)) return { ok: false, message: USAGE.quiz };
  return { ok: true, url, intent: { command: 'quiz', rounds: Number(rest) } };
}

/** Conversation key of a Slack thread. */
export function conversationKey(channel: string, threadTs: string): string {
  return `slack:${channel}:${threadTs}`;
}

export function parseConversationKey(id: string): { channel: string; threadTs: string } | undefined {
  const m = /^slack:([A-Z0-9]+):(\d+\.\d+)$/i.exec(id);
  return m ? { channel: m[1], threadTs: m[2] } : undefined;
}
