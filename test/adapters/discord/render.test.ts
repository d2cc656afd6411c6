/** Discord rendering (pure) and the throttled editor, without Discord. */
import { footerText, parseMoreButtonId, renderReply, revealText, splitForDiscord, statusText, threadName, moreButtonId } from '../../../src/adapters/discord/render';
import { MessageList, ThrottledReply } from '../../../src/adapters/discord/stream';
import type { DiscordPayload } from '../../../src/adapters/discord/render';

const words = (n: number) => Array.from({ length: n }, (_, i) => `word${i}`).join(' ');

describe('renderReply', () => {
  it('a short answer: one message, footer when final, a "writing" marker while streaming', () => {
    const stats = { tokens: 42, totalMs: 2100, tokensPerSecond: 20, cached: false };
    expect(renderReply({ kind: 'answer', text: 'A red circle.' }, { final: { stats } })).toEqual([
      { content: 'A red circle.\n-# 42 tokens · 2.1 s · 20.0 tokens/s', components: [] },
    ]);
    expect(renderReply({ kind: 'answer', text: 'A red' })[0].content).toBe('A red\n-# ✍️ writing…');
    expect(footerText({ tokens: 3, totalMs: 0, tokensPerSecond: 0, cached: true })).toBe('-# answered from cache');
  });

  it('a long answer: every message under 2000 characters, words and code blocks intact, header first, footer last', () => {
    const code = '```ts\n' + Array.from({ length: 80 }, (_, i) => `const value${i} = ${i}; // a line of code`).join('\n') + '\n```';
    const text = `${words(300)}\n\n${code}\n\n${words(200)}`;
    const parts = renderReply({ kind: 'answer', text }, { header: '> the question', final: { stats: { tokens: 900, totalMs: 30_000, tokensPerSecond: 30, cached: false } } });
    expect(parts.length).toBeGreaterThan(2);
    for (const p of parts) {
      expect(p.content.length).toBeLessThanOrEqual(2000);
      expect((p.content.match(/```/g) ?? []).length % 2).toBe(0);
    }
    expect(parts[0].content.startsWith('> the question\n')).toBe(true);
    expect(parts[parts.length - 1].content).toMatch(/\n-# 900 tokens · 30 s/);
    const all = parts.map((p) => p.content).join(' ');
    for (let i = 0; i < 300; i += 37) expect(all).toMatch(new RegExp(`\\bword${i}\\b`));
  });

  it('a quiz: answers as spoilers, Reveal on messages with spoilers, Another question (with the round count) on the last', () => {
    const reply = { kind: 'quiz' as const, description: 'Two shapes.', rounds: [{ question: 'How many?', answer: 'Two || three' }, { question: 'Colour?', answer: 'Red.' }] };
    const [msg] = renderReply(reply, { conversationKey: '123', final: {} });
    expect(msg.content).toBe('Two shapes.\n\n**Q1.** How many?\n**A1.** ||Two | | three||\n\n**Q2.** Colour?\n**A2.** ||Red.||');
    expect(msg.components[0].components.map((c) => c.custom_id)).toEqual(['curio:reveal', 'curio:more:2:123']);
    const more = renderReply({ kind: 'quiz', description: '', rounds: [{ question: 'Why?', answer: 'Because.' }] }, { conversationKey: '123', quizOffset: 2, final: {} });
    expect(more[0].content).toBe('**Q3.** Why?\n**A3.** ||Because.||');
    expect(more[0].components[0].components[1].custom_id).toBe('curio:more:3:123');
    // While streaming: no buttons.
    expect(renderReply(reply, { conversationKey: '123' })[0].components).toEqual([]);
  });

  it('spoilers cut by a split are closed and reopened', () => {
    const parts = splitForDiscord(`||${words(400)}||`, 2000);
    expect(parts.length).toBeGreaterThan(1);
    for (const p of parts) expect((p.match(/\|\|/g) ?? []).length % 2).toBe(0);
  });

  it('button ids round-trip; status, reveal and thread-name texts', () => {
    expect(parseMoreButtonId(moreButtonId('987654321', 4))).toEqual({ conversationKey: '987654321', roundsSoFar: 4 });
    expect(parseMoreButtonId('curio:reveal')).toBeUndefined();
    expect(statusText({ queued: 3 })).toBe('⏳ Waiting in line — #3 in the queue.');
    expect(statusText({ queued: 1 })).toBe('⏳ Waiting in line — you are next.');
    expect(statusText({ started: true, header: '> q' })).toBe('> q\n🔎 Looking at the image…');
    expect(revealText('Desc\n\n**Q1.** a?\n**A1.** ||b||\n-# 10 tokens')).toBe('Desc\n\n**Q1.** a?\n**A1.** b');
    expect(threadName({ kind: 'answer', text: '**A** red `circle` on a white background, with a lot of extra words after it' }, 'x')).toBe('🖼️ A red circle on a white background, with a lot of extra…');
    expect(threadName({ kind: 'answer', text: '' }, 'Curio')).toBe('Curio');
  });
});

class RecordingList extends MessageList {
  ops: Array<{ op: string; index: number; content?: string; at: number }> = [];
  delayMs = 0;
  private async rec(op: string, index: number, p?: DiscordPayload) {
    this.ops.push({ op, index, content: p?.content, at: Date.now() });
    await new Promise((r) => setTimeout(r, this.delayMs));
  }
  protected create(i: number, p: DiscordPayload) {
    return this.rec('create', i, p);
  }
  protected edit(i: number, p: DiscordPayload) {
    return this.rec('edit', i, p);
  }
  protected remove(i: number) {
    return this.rec('remove', i);
  }
}

const msg = (content: string): DiscordPayload => ({ content, components: [] });

describe('ThrottledReply', () => {
  it('sends the first state at once, then at most one update per interval, and the final state last', async () => {
    const list = new RecordingList();
    list.delayMs = 5;
    const t = new ThrottledReply(list, { intervalMs: 200 });
    const start = Date.now();
    for (let n = 1; n <= 25; n++) {
      t.update([msg(`text ${n}`)]);
      await new Promise((r) => setTimeout(r, 20));
    }
    await t.finish([msg('final'), msg('part two')]);
    const times = list.ops.filter((o) => o.index === 0).map((o) => o.at);
    for (let k = 1; k < times.length; k++) expect(times[k] - times[k - 1]).toBeGreaterThanOrEqual(190);
    expect(list.ops[0]).toMatchObject({ op: 'create', content: 'text 1' });
    expect(list.ops.length).toBeLessThan(10); // 25 states, ~600 ms: a handful of updates
    expect(list.ops.slice(-2)).toMatchObject([
      { op: 'edit', index: 0, content: 'final' },
      { op: 'create', index: 1, content: 'part two' },
    ]);
    expect(Date.now() - start).toBeLessThan(2000);
  });

  it('skips unchanged messages and removes extra ones', async () => {
    const list = new RecordingList();
    await list.sync([msg('a'), msg('b')]);
    await list.sync([msg('a'), msg('c')]);
    await list.sync([msg('a')]);
    expect(list.ops.map((o) => `${o.op}${o.index}`)).toEqual(['create0', 'create1', 'edit1', 'remove1']);
  });
});
