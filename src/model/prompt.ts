/**
 * Prompt templates, with the same semantics as `training/sqllava/conversation.py` (the
 * reference `Conversation.get_prompt()` for SeparatorStyle.TWO and `sq_training_text`).
 *
 * Continuation rule (chat follow-ups and quiz rounds). A conversation is one growing token
 * sequence. Every new turn is appended *after an EOS* (`</s>`, the template's `sep2`, which ends
 * each assistant or VUSER turn; the engine appends it when generation stopped for another
 * reason), and the new text is tokenised on its own without BOS. This equals tokenising the
 * whole conversation text at once, because the tokenizer treats `</s>` as a special token and
 * tokenises the text after it as a separate piece with SentencePiece's dummy-prefix space:
 * `</s>VUSER:` → `[2, ▁V, USER, :]`, `</s> ASSISTANT:` → `[2, ▁▁, ASS, IST, ANT, :]`
 * (docs/model-bundle.md). The tests check this identity against the tokenizer.
 */
import type { TemplateSpec } from './manifest';

export const IMAGE_PLACEHOLDER = '<image>';

export type TemplateName = 'v1' | 'v1_sq';

/** (role, message); a null/empty message writes `ROLE:` and ends the prompt there. */
export type Message = [role: string, message: string | null];

/** `Template.prompt`: seps alternate by message index. */
export function renderPrompt(t: TemplateSpec, messages: readonly Message[]): string {
  const seps = [t.sep, t.sep2];
  let out = t.system + seps[0];
  messages.forEach(([role, message], i) => {
    out += message ? `${role}: ${message}${seps[i % 2]}` : `${role}:`;
  });
  return out;
}

/** The first user message carries the image: `<image>\n{question}`. */
export function firstUserMessage(question: string, imageToken = IMAGE_PLACEHOLDER): string {
  return `${imageToken}\n${question}`;
}

/** `{system} USER: <image>\n{question} ASSISTANT:` — the opening prompt of every task. */
export function openingPrompt(t: TemplateSpec, question: string, imageToken = IMAGE_PLACEHOLDER): string {
  return renderPrompt(t, [
    [t.roles[0], firstUserMessage(question, imageToken)],
    [t.roles[1], null],
  ]);
}

/** A follow-up user turn, appended after the EOS that closed the previous answer. */
export function userTurn(t: TemplateSpec, message: string): string {
  return `${t.roles[0]}: ${message}${t.sep}${t.roles[1]}:`;
}

/** The v1_sq self-questioning turn opener, appended after an EOS: `VUSER:`. */
export function vuserTurn(t: TemplateSpec): string {
  if (t.roles.length < 3) throw new Error('template has no VUSER role');
  return `${t.roles[2]}:`;
}

/**
 * After a VUSER question (closed by its EOS) the trained layout continues ` ASSISTANT:` — with
 * the template's `sep` in front, exactly as in `{Q2}</s> ASSISTANT: {A2}`.
 */
export function sqAnswerTurn(t: TemplateSpec): string {
  return `${t.sep}${t.roles[1]}:`;
}

/**
 * `sq_training_text`: the trained v1_sq layout from (role, question, answer) turns, role being
 * USER or VUSER. Used by tests to prove the incremental tokenisation equals the trained one.
 */
export function sqTrainingText(t: TemplateSpec, turns: readonly [role: string, q: string, a: string][], imageToken = IMAGE_PLACEHOLDER): string {
  const [user, assistant, vuser] = t.roles;
  let out = t.system + t.sep;
  turns.forEach(([role, q0, a], i) => {
    const q = i === 0 ? firstUserMessage(q0, imageToken) : q0;
    if (role === vuser) out += `${vuser}: ${q}${t.sep2}${t.sep}${assistant}: ${a}${t.sep2}`;
    else out += `${user}: ${q}${t.sep}${assistant}: ${a}${t.sep2}`;
  });
  return out;
}
