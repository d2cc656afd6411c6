/**
 * The Slack adapter's pure parts: Block Kit rendering (escaping, splitting under the block and
 * message limits, quiz buttons), command/mention parsing, the throttled streamed reply, and the
 * event dedupe / thread registry (memory and real Redis).
 */
import type { WebClient } from '@slack/web-api';
import {
  ACTION_MORE,
  ACTION_REVEAL,
  BUTTON_VALUE_LIMIT,
  MAX_BLOCKS_PER_MESSAGE,
  SECTION_LIMIT,
  escapeMrkdwn,
  parseMoreValue,
  parseRevealValue,
  renderReply,
  type Block,
  type SlackMessage,
} from '../../../src/adapters/slack/render';
import { extractLink, pickImage } from '../../../src/adapters/slack/images';
import { parseConversationKey, parseMention, parseSlash, stripMention, conversationKey } from '../../../src/adapters/slack/parse';
import { StreamedReply } from '../../../src/adapters/slack/stream';
import { MemoryEventDeduper, MemoryThreadRegistry, RedisEventDeduper, RedisThreadRegistry } from '../../../src/adapters/slack/state';
import { Redis } from 'ioredis';
import { startRedis, type TestRedis } from '../../support/redis';

const sectionText = (b: Block) => (b.type === 'section' ? b.text.text : '');
const allText = (ms: SlackMessage[]) => ms.flatMap((m) => m.blocks.map(sectionText)).join('');

describe('render', () => {
  it('escapes mrkdwn control characters so model output cannot ping or link', () => {
    expect(escapeMrkdwn('a <!channel> & <@U1> <http://x|y>')).toBe('a &lt;!channel&gt; &amp; &lt;@U1&gt; &lt;http://x|y&gt;');
    const [m] = renderReply({ kind: 'answer', text: 'Hi <!here> & bye' }, { final: true, conversationId: 'slack:C1:1.1' });
    expect(sectionText(m.blocks[0])).toBe('Hi &lt;!here&gt; &amp; bye');
  });

  it('splits a long answer into section blocks of at most 3000 characters and across messages', () => {
    const para = 'The quick brown fox & the lazy dog <3. '.repeat(40); // ~1600 chars, grows when escaped
    const text = Array.from({ length: 30 }, () => para.trim()).join('\n\n'); // ~48k chars
    const messages = renderReply({ kind: 'answer', text }, { final: true, conversationId: 'c', stats: { tokens: 1, totalMs: 1000, tokensPerSecond: 5, cached: false } });
    expect(messages.length).toBeGreaterThan(1);
    for (const m of messages) {
      expect(m.blocks.length).toBeLessThanOrEqual(50);
      for (const b of m.blocks) if (b.type === 'section') expect(b.text.text.length).toBeLessThanOrEqual(SECTION_LIMIT);
      expect(m.text.length).toBeLessThanOrEqual(300);
    }
    // Nothing lost: the escaped words all arrive, in order.
    expect(allText(messages).replace(/\s+/g, '')).toBe(escapeMrkdwn(text).replace(/\s+/g, ''));
    // The footer closes the last message.
    const last = messages[messages.length - 1].blocks.at(-1)!;
    expect(last).toMatchObject({ type: 'context' });
  });

  it('keeps many small blocks under the per-message block limit', () => {
    const rounds = Array.from({ length: 120 }, (_, i) => ({ question: `Q${i}?`, answer: `A${i}` }));
    const messages = renderReply({ kind: 'quiz', description: 'desc', rounds }, { final: true, conversationId: 'slack:C1:1.1' });
    expect(messages.length).toBeGreaterThan(2);
    for (const m of messages) expect(m.blocks.length).toBeLessThanOrEqual(MAX_BLOCKS_PER_MESSAGE);
  });

  it('hides quiz answers behind Reveal buttons and offers another question when final', () => {
    const long = 'x'.repeat(5000) + ' "quoted" \\ ';
    const reply = { kind: 'quiz' as const, description: 'A red circle.', rounds: [{ question: 'What colour?', answer: 'Red.' }, { question: 'Big?', answer: long }] };
    const [m] = renderReply(reply, { final: true, conversationId: 'slack:C1:1700000001.000001', roundOffset: 2 });
    // Visible text never shows an answer (it rides in the button's value).
    expect(m.blocks.map(sectionText).join('\n')).not.toContain('Red.');
    const buttons = m.blocks.flatMap((b) => (b.type === 'section' && b.accessory ? [b.accessory] : b.type === 'actions' ? b.elements : []));
    expect(buttons.map((b) => b.action_id)).toEqual([ACTION_REVEAL, ACTION_REVEAL, ACTION_MORE]);
    expect(sectionText(m.blocks[1])).toBe('*Question 3:* What colour?');
    for (const b of buttons) expect(b.value.length).toBeLessThanOrEqual(BUTTON_VALUE_LIMIT);
    expect(parseRevealValue(buttons[0].value)).toEqual({ n: 3, a: 'Red.' });
    const second = parseRevealValue(buttons[1].value)!;
    expect(second.n).toBe(4);
    expect(second.a.endsWith('…')).toBe(true);
    expect(parseMoreValue(buttons[2].value)).toEqual({ c: 'slack:C1:1700000001.000001', n: 5 });
  });

  it('streams a quiz without answers or buttons', () => {
    const reply = { kind: 'quiz' as const, description: 'A red circle.', rounds: [{ question: 'What colour?', answer: 'Re' }] };
    const [m] = renderReply(reply, { final: false, conversationId: 'c' });
    expect(JSON.stringify(m.blocks)).not.toContain('Re"');
    expect(m.blocks.some((b) => b.type === 'actions' || (b.type === 'section' && b.accessory))).toBe(false);
    expect(sectionText(m.blocks[1])).toContain('_answering…_');
  });
});

describe('parse', () => {
  it('reads slash command arguments and Slack-formatted links', () => {
    expect(parseSlash('describe', '')).toEqual({ ok: true, intent: { command: 'describe', detail: 'brief' } });
    expect(parseSlash('describe', 'detailed')).toMatchObject({ ok: true, intent: { detail: 'detailed' } });
    expect(parseSlash('describe', 'what?')).toMatchObject({ ok: false });
    expect(parseSlash('ask', '')).toMatchObject({ ok: false, message: expect.stringContaining('/ask <question>') });
    expect(parseSlash('ask', 'what is it? <https://files.slack.com/a/b.png?x=1&amp;y=2|b.png>')).toEqual({
      ok: true,
      url: 'https://files.slack.com/a/b.png?x=1&y=2',
      intent: { command: 'ask', text: 'what is it?' },
    });
    expect(parseSlash('quiz', '3')).toEqual({ ok: true, intent: { command: 'quiz', rounds: 3 } });
    expect(parseSlash('quiz', 'lots')).toMatchObject({ ok: false });
    expect(extractLink('see https://example.com/x.png now')).toEqual({ url: 'https://example.com/x.png', rest: 'see now' });
  });

  it('reads mentions', () => {
    expect(stripMention('<@UBOT> what is this?', 'UBOT')).toBe('what is this?');
    expect(parseMention('')).toEqual({ command: 'describe', detail: 'brief' });
    expect(parseMention('describe in detail')).toEqual({ command: 'describe', detail: 'detailed' });
    expect(parseMention('quiz me 2')).toEqual({ command: 'quiz', rounds: 2 });
    expect(parseMention('what colour is it?')).toEqual({ command: 'ask', text: 'what colour is it?' });
    expect(parseConversationKey(conversationKey('C1', '1700000000.000100'))).toEqual({ channel: 'C1', threadTs: '1700000000.000100' });
  });

  it('says which file is not an image', () => {
    expect(() => pickImage([{ id: 'F1', name: 'notes.pdf', mimetype: 'application/pdf', pretty_type: 'PDF' }])).toThrow('“notes.pdf” is not an image (PDF)');
    expect(pickImage([{ id: 'F1', mimetype: 'text/plain' }, { id: 'F2', mimetype: 'image/png' }])?.id).toBe('F2');
  });
});

describe('StreamedReply', () => {
  function fakeClient() {
    const calls: Array<{ method: string; at: number; args: any }> = [];
    let n = 0;
    const client = {
      chat: {
        postMessage: async (args: any) => {
          calls.push({ method: 'post', at: Date.now(), args });
          return { ok: true, ts: `1.${++n}` };
        },
        update: async (args: any) => {
          calls.push({ method: 'update', at: Date.now(), args });
          await new Promise((r) => setTimeout(r, 5));
          return { ok: true };
        },
        delete: async (args: any) => {
          calls.push({ method: 'delete', at: Date.now(), args });
          return { ok: true };
        },
      },
    };
    return { client: client as unknown as WebClient, calls };
  }
  const msg = (t: string): SlackMessage[] => [{ text: t, blocks: [{ type: 'section', text: { type: 'mrkdwn', text: t } }] }];

  it('edits at most once per interval, keeps the newest, and always sends the final content', async () => {
    const { client, calls } = fakeClient();
    const s = new StreamedReply(client, { channel: 'C1', threadTs: '9.9', minIntervalMs: 100 });
    for (let i = 1; i <= 30; i++) {
      s.update(msg(`part ${i}`));
      await new Promise((r) => setTimeout(r, 10));
    }
    await s.finish(msg('final'));
    expect(calls[0]).toMatchObject({ method: 'post', args: { thread_ts: '9.9', text: 'part 1' } });
    const updates = calls.filter((c) => c.method === 'update');
    expect(updates.length).toBeGreaterThan(0);
    expect(updates.length).toBeLessThan(8); // ~300 ms of streaming at one edit per 100 ms
    expect(updates.at(-1)!.args.text).toBe('final');
    const times = calls.map((c) => c.at);
    for (let i = 1; i < times.length - 1; i++) expect(times[i] - times[i - 1]).toBeGreaterThanOrEqual(90);
  });

  it('continues a long reply in further messages and removes extras when the reply shrinks', async () => {
    const { client, calls } = fakeClient();
    const s = new StreamedReply(client, { channel: 'C1', minIntervalMs: 0 });
    await s.show(msg('root'));
    expect(s.threadTs).toBe('1.1');
    s.update([...msg('a'), ...msg('b'), ...msg('c')]);
    await s.finish(msg('error'));
    expect(calls.map((c) => c.method)).toEqual(['post', 'update', 'post', 'post', 'update', 'delete', 'delete']);
    expect(calls[2].args.thread_ts).toBe('1.1');
  });
});

describe('dedupe and thread registry', () => {
  it('claims an event id once (memory)', async () => {
    const d = new MemoryEventDeduper();
    expect(await d.claim('Ev1')).toBe(true);
    expect(await d.claim('Ev1')).toBe(false);
    expect(await d.claim('Ev2')).toBe(true);
    const t = new MemoryThreadRegistry({ ttlMs: 60_000 });
    await t.add('slack:C1:1.1');
    expect(await t.has('slack:C1:1.1')).toBe(true);
    expect(await t.has('slack:C1:2.2')).toBe(false);
  });

  describe('Redis', () => {
    let redis: TestRedis;
    beforeAll(async () => {
      redis = await startRedis();
    }, 30_000);
    afterAll(() => redis?.stop());

    it('claims with SET NX across two bot processes, with a TTL', async () => {
      const a = new RedisEventDeduper(redis.client(), { prefix: 'test', ttlMs: 5000 });
      const b = new RedisEventDeduper(redis.client(), { prefix: 'test', ttlMs: 5000 });
      const results = await Promise.all([a.claim('Ev9'), b.claim('Ev9'), a.claim('Ev9')]);
      expect(results.filter(Boolean)).toHaveLength(1);
      const ttl = await redis.client().pttl('test:slack:event:Ev9');
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(5000);
      const t = new RedisThreadRegistry(redis.client(), { prefix: 'test', ttlMs: 5000 });
      await t.add('slack:C1:1.1');
      expect(await new RedisThreadRegistry(redis.client(), { prefix: 'test', ttlMs: 5000 }).has('slack:C1:1.1')).toBe(true);
      expect(await t.has('slack:C1:3.3')).toBe(false);
    });

    it('fails open when Redis is gone (answering twice beats never answering)', async () => {
      const gone = new Redis('redis://127.0.0.1:1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
      const warnings: string[] = [];
      const d = new RedisEventDeduper(gone, { prefix: 'test', logger: { warn: (_o, m) => warnings.push(m) } });
      expect(await d.claim('Ev10')).toBe(true);
      expect(warnings).toHaveLength(1);
      gone.disconnect();
    });
  });
});
