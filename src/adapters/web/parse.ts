/**
 * What the playground's text box accepts, the same commands as the bots:
 *   /describe [detailed]   /ask <question>   /quiz [n]   /more (another question)
 * and anything else is a follow-up message in the current conversation (or, before the first
 * reply about a freshly dropped image, a question about it).
 */
import type { CommandName } from '../../core/commands';

export type ParsedInput =
  | { ok: true; command: CommandName; text?: string; detail?: 'brief' | 'detailed'; rounds?: number }
  | { ok: false; message: string };

const HELP = 'Try /describe [detailed], /ask <question>, /quiz [number of questions], or just type a message.';

export function parseInput(raw: string, maxQuizRounds: number): ParsedInput {
  const input = raw.trim();
  if (!input) return { ok: false, message: `Please write something. ${HELP}` };
  if (!input.startsWith('/')) return { ok: true, command: 'followup', text: input };
  const [, name = '', rest = ''] = /^\/(\S*)\s*([\s\S]*)$/.exec(input) ?? [];
  const arg = rest.trim();
  switch (name.toLowerCase()) {
    case 'describe': {
      if (!arg || /^(brief|short)$/i.test(arg)) return { ok: true, command: 'describe', detail: 'brief' };
      if (/^(detailed|detail|long)$/i.test(arg)) return { ok: true, command: 'describe', detail: 'detailed' };
      return { ok: false, message: `/describe takes "detailed" or nothing (got "${arg.slice(0, 40)}"). To ask something, use /ask <question>.` };
    }
    case 'ask':
      if (!arg) return { ok: false, message: 'Please write a question after /ask.' };
      return { ok: true, command: 'ask', text: arg };
    case 'quiz': {
      if (!arg) return { ok: true, command: 'quiz' };
      const n = Number(arg);
      if (!Number.isInteger(n) || n < 1 || n > maxQuizRounds) {
        return { ok: false, message: `The number of questions must be between 1 and ${maxQuizRounds}.` };
      }
      return { ok: true, command: 'quiz', rounds: n };
    }
    case 'more':
      return { ok: true, command: 'more' };
    case 'help':
      return { ok: false, message: HELP };
    default:
      return { ok: false, message: `Unknown command /${name.slice(0, 30)}. ${HELP}` };
  }
}
