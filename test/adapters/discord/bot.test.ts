/**
 * The Discord adapter end to end: the real discord.js client against a fake Discord on
 * loopback (REST + gateway + CDN, test/support/fake-discord.ts), with Curio's app built by
 * createApp and the bundled model (models/sq-llava-micro) answering for real. Tests act as
 * users (INTERACTION_CREATE, MESSAGE_CREATE) and check what discord.js sends back.
 */
import path from 'node:path';
import sharp from 'sharp';
import { createApp, type App } from '../../../src/app';
import type { Config } from '../../../src/config';
import { createDiscordBot, type DiscordBot } from '../../../src/adapters/discord/bot';
import { createLocalInference } from '../../../src/inference/local';
import type { InferenceClient, InferenceJob, JobEvent, RunHandle } from '../../../src/inference/types';
import { FakeDiscord, user, type Json, type RecordedRequest } from '../../support/fake-discord';
import { bundledModelConfig } from '../../support/model';

const MB = 1024 * 1024;

/** Routes jobs to the real pool, or to a scripted client while a test sets one. */
class SwitchableInference implements InferenceClient {
  override: InferenceClient | undefined;
  constructor(readonly real: InferenceClient) {}
  run(job: InferenceJob, onEvent: (e: JobEvent) => void): RunHandle {
    return (this.override ?? this.real).run(job, onEvent);
  }
  stats() {
    return this.real.stats();
  }
  close() {
    return this.real.close();
  }
}

let fake: FakeDiscord;
let app: App;
let bot: DiscordBot;
let config: Config;
let inference: SwitchableInference;
const errors: string[] = [];
const warnings: string[] = [];

async function png(r: number, g: number, b: number, size = 64): Promise<Buffer> {
  return sharp({ create: { width: size, height: size, channels: 3, background: { r, g, b } } })
    .png()
    .toBuffer();
}

const isEphemeral = (r: RecordedRequest) => ((r.body?.flags ?? r.body?.data?.flags ?? 0) & 64) === 64;
const callbackOf = (i: { id: string; token: string }) => (r: RecordedRequest) => r.method === 'POST' && r.path === `/interactions/${i.id}/${i.token}/callback`;
const onWebhook = (i: { token: string }, method: string, rest = '') => (r: RecordedRequest) =>
  r.method === method && r.path === `/webhooks/${fake.applicationId}/${i.token}${rest}`;
/** The last edit of the interaction's original reply that carries its stats footer (the final edit). */
const finalEdit = (i: { token: string }) => (r: RecordedRequest) => onWebhook(i, 'PATCH', '/messages/@original')(r) && /\n-# (\d+ tokens|answered from cache)/.test(r.body?.content ?? '');

beforeAll(async () => {
  fake = await FakeDiscord.start();
  config = bundledModelConfig({
    inference: { max_queue: 2 },
    limits: { per_user: { capacity: 6, per_minute: 1 }, per_channel: { capacity: 1000, per_minute: 1000 } },
  });
  // The app's own pool, wrapped so a test can stand in a scripted client (the long answer).
  const real = await createLocalInference({
    bundleDir: config.model.dir,
    workers: 1,
    intraOpNumThreads: 1,
    maxQueue: config.inference.max_queue,
    imageLimits: { maxBytes: config.limits.max_image_mb * MB, maxPixels: config.limits.max_image_megapixels * 1e6 },
  });
  inference = new SwitchableInference(real);
  app = await createApp(config, { log: 'silent', inference });
  bot = createDiscordBot({
    commands: app.commands,
    config,
    token: 'fake-bot-token',
    applicationId: fake.applicationId,
    restApi: fake.api,
    extraImageHosts: [fake.host],
    insecureImageHosts: [fake.host],
    logger: { info() {}, warn: (o, m) => warnings.push(`${m} ${JSON.stringify(o)}`), error: (o, m) => errors.push(`${m} ${JSON.stringify(o)}`) },
  });
  await bot.start();
}, 60_000);

afterAll(async () => {
  await bot?.stop();
  await app?.close();
  await fake?.close();
});

describe('Discord bot (discord.js against a fake Discord)', () => {
  it('connects with only the intents it needs and authenticates as a bot', async () => {
    expect(fake.identify?.intents).toBe((1 << 0) | (1 << 9) | (1 << 15) | (1 << 12)); // Guilds, GuildMessages, MessageContent, DirectMessages
    expect(fake.identify?.token).toBe('fake-bot-token');
  });

  it('/describe: defers at once, streams edits, finishes with the answer and stats, opens a thread on the reply', async () => {
    const alice = user('alice');
    const t0 = Date.now();
    const i = fake.slash('describe', { image: fake.attachment('red.png', await png(200, 30, 30), 'image/png') }, { user: alice });
    const ack = await fake.waitFor(callbackOf(i), 5000, 'the defer');
    expect(ack.body.type).toBe(5);
    expect(isEphemeral(ack)).toBe(false);
    expect(ack.at - t0).toBeLessThan(3000);
    const done = await fake.waitFor(finalEdit(i), 30_000, 'the final edit');
    expect(done.body.allowed_mentions).toEqual({ parse: [], replied_user: false });
    const original = fake.original(i.token)!;
    expect(original.content).toBe(done.body.content);
    expect(original.content.length).toBeLessThanOrEqual(2000);
    const thread = await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${fake.channelId}/messages/${original.id}/threads`, 5000, 'the thread');
    expect(thread.body.name).toMatch(/^🖼️ /);
    expect(thread.headers.authorization).toBe('Bot fake-bot-token');
  });

  it('/ask: shows the question above the answer', async () => {
    const bob = user('bob');
    const i = fake.slash('ask', { question: 'What colour is the square?', image: fake.attachment('blue.png', await png(20, 40, 220), 'image/png') }, { user: bob });
    const done = await fake.waitFor(finalEdit(i), 30_000, 'the final edit');
    expect(done.body.content.startsWith('> What colour is the square?\n')).toBe(true);
  });

  it('/describe with an image link on the CDN host, detail: detailed', async () => {
    const carol = user('carol');
    const url = fake.file('/attachments/1/2/green.png', await png(30, 200, 30), 'image/png');
    const i = fake.slash('describe', { url, detail: 'detailed' }, { user: carol });
    const done = await fake.waitFor(finalEdit(i), 30_000, 'the final edit');
    expect(done.body.content).toMatch(/\n-# \d+ tokens/);
  });

  it('an image link on another host is refused privately, without downloading', async () => {
    const carol = user('carol2');
    const i = fake.slash('describe', { url: 'https://example.com/cat.png' }, { user: carol });
    const refusal = await fake.waitFor((r) => onWebhook(i, 'POST')(r) && isEphemeral(r), 10_000, 'the ephemeral refusal');
    expect(refusal.body.content).toMatch(/only fetch images from cdn\.discordapp\.com/);
    await fake.waitFor(onWebhook(i, 'DELETE', '/messages/@original'), 5000, 'the public acknowledgement removed');
  });

  it('/quiz: answers hidden as spoilers, "Reveal answers" privately, "Another question" runs one more round', async () => {
    const dan = user('dan');
    const i = fake.slash('quiz', { image: fake.attachment('quiz.png', await png(240, 200, 10), 'image/png'), questions: 2 }, { user: dan });
    const done = await fake.waitFor(finalEdit(i), 30_000, 'the final quiz');
    const content: string = done.body.content;
    const rounds = [...content.matchAll(/\*\*Q(\d)\.\*\* /g)].map((m) => Number(m[1]));
    expect(rounds).toEqual([1, 2]);
    const n = rounds.length;
    expect(content).toMatch(/\*\*A1\.\*\* \|\|[\s\S]+?\|\|/);
    const ids = done.body.components.flatMap((row: { components: Array<{ custom_id: string }> }) => row.components.map((c) => c.custom_id));
    const original = fake.original(i.token)!;
    expect(ids).toEqual(['curio:reveal', `curio:more:${n}:${original.id}`]);

    const reveal = fake.click(original, 'curio:reveal', { user: user('erin') });
    const shown = await fake.waitFor(callbackOf(reveal), 5000, 'the reveal');
    expect(shown.body.type).toBe(4);
    expect(isEphemeral(shown)).toBe(true);
    expect(shown.body.data.content).not.toContain('||');
    expect(shown.body.data.content).toMatch(/\*\*A1\.\*\* /);

    const more = fake.click(original, `curio:more:${n}:${original.id}`, { user: dan });
    const moreDone = await fake.waitFor((r) => finalEdit(more)(r) || (onWebhook(more, 'POST')(r) && isEphemeral(r)), 30_000, 'another question');
    const moreOriginal = fake.original(more.token)!;
    expect(moreDone.body.content).toMatch(new RegExp(`^\\*\\*Q${n + 1}\\.\\*\\* [\\s\\S]*\\*\\*A${n + 1}\\.\\*\\* \\|\\|`));
    expect(moreOriginal.components[0].components.map((c: { custom_id: string }) => c.custom_id)).toEqual(['curio:reveal', `curio:more:${n + 1}:${original.id}`]);
  });

  it('"Describe image" on a message with two images uses the first and says so; "Quiz me" quizzes', async () => {
    const fay = user('fay');
    const a = fake.attachment('one.png', await png(10, 10, 10), 'image/png');
    const b = fake.attachment('two.png', await png(250, 250, 250), 'image/png');
    const target = fake.post({ user: fay, content: 'look at these', attachments: [a, b] });
    const i = fake.messageMenu('Describe image', target, { user: user('gus') });
    const done = await fake.waitFor(finalEdit(i), 30_000, 'the description');
    expect(done.body.content.split('\n')[0]).toMatch(/^-# About https:\/\/discord\.com\/channels\/.+ \(the first of its 2 images\)$/);
    const fetched = fake.requests.filter((r) => r.method === 'GET' && r.path.includes('/attachments/'));
    expect(fetched).toHaveLength(0); // downloads go to the CDN, not the API
    const q = fake.messageMenu('Quiz me', target, { user: user('hal') });
    const quiz = await fake.waitFor(finalEdit(q), 30_000, 'the quiz');
    expect(quiz.body.content).toMatch(/\*\*Q1\.\*\* [\s\S]*\|\|/);
  });

  it('a context-menu command on a message without an image is refused privately', async () => {
    const target = fake.post({ user: user('ivy'), content: 'no pictures here' });
    const i = fake.messageMenu('Describe image', target, { user: user('jon') });
    const refusal = await fake.waitFor((r) => (onWebhook(i, 'POST')(r) || callbackOf(i)(r)) && isEphemeral(r), 10_000, 'the refusal');
    expect(JSON.stringify(refusal.body)).toMatch(/no image/);
  });

  it('threads: a message in the reply\'s thread continues the conversation; a new image there starts a new one', async () => {
    const kim = user('kim');
    const i = fake.slash('describe', { image: fake.attachment('t.png', await png(120, 0, 120), 'image/png') }, { user: kim });
    await fake.waitFor(finalEdit(i), 30_000, 'the description');
    const original = fake.original(i.token)!;
    await fake.waitFor((r) => r.path === `/channels/${fake.channelId}/messages/${original.id}/threads`, 5000, 'the thread');
    const threadId = original.id; // a thread started from a message has its id

    const reply = async (m: Json) => {
      const created = await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${threadId}/messages` && r.body?.message_reference?.message_id === m.id, 10_000, 'the reply in the thread');
      const id = fake.botMessages(threadId).find((x) => x.message_reference?.message_id === m.id)!.id;
      const done = await fake.waitFor((r) => r.method === 'PATCH' && r.path === `/channels/${threadId}/messages/${id}` && /\n-# \d+ tokens/.test(r.body?.content ?? ''), 30_000, 'the final reply');
      return { created, done };
    };

    const q1 = fake.post({ user: kim, content: 'What is in the corner?', channelId: threadId });
    const r1 = await reply(q1);
    expect(r1.done.body.content).not.toMatch(/expired|⚠️/);
    expect(r1.created.body.allowed_mentions).toEqual({ parse: [], replied_user: false });

    const q2 = fake.post({ user: user('lea'), content: '', channelId: threadId, attachments: [fake.attachment('new.png', await png(0, 128, 128), 'image/png')] });
    const r2 = await reply(q2);
    expect(r2.done.body.content).not.toMatch(/⚠️/);

    const q3 = fake.post({ user: kim, content: 'And the background?', channelId: threadId });
    const r3 = await reply(q3);
    expect(r3.done.body.content).not.toMatch(/expired|⚠️/);
    // No thread inside a thread.
    expect(fake.requests.filter((r) => r.path.startsWith(`/channels/${threadId}/messages/`) && r.path.endsWith('/threads'))).toHaveLength(0);
  });

  it('mentioning the bot with an image works as /describe, in a reply with its own thread; replying to that reply continues it', async () => {
    const max = user('max');
    const m = fake.post({ user: max, mentionBot: true, attachments: [fake.attachment('m.png', await png(90, 90, 10), 'image/png')] });
    await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${fake.channelId}/messages` && r.body?.message_reference?.message_id === m.id, 10_000, 'the reply');
    const reply = fake.botMessages(fake.channelId).find((x) => x.message_reference?.message_id === m.id)!;
    await fake.waitFor((r) => r.method === 'PATCH' && r.path === `/channels/${fake.channelId}/messages/${reply.id}` && /\n-# \d+ tokens/.test(r.body?.content ?? ''), 30_000, 'the answer');
    await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${fake.channelId}/messages/${reply.id}/threads`, 5000, 'the thread');

    // Replying to Curio's message (outside its thread) continues the same conversation.
    const again = fake.post({ user: max, content: 'Is it bright?', replyTo: fake.messages.get(reply.id)!, mentionBot: true });
    await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${fake.channelId}/messages` && r.body?.message_reference?.message_id === again.id, 10_000, 'the follow-up reply');
    const second = fake.botMessages(fake.channelId).find((x) => x.message_reference?.message_id === again.id)!;
    const done = await fake.waitFor((r) => r.method === 'PATCH' && r.path === `/channels/${fake.channelId}/messages/${second.id}` && /\n-# \d+ tokens/.test(r.body?.content ?? ''), 30_000, 'the follow-up answer');
    expect(done.body.content).not.toMatch(/⚠️/);
  });

  it('in a DM: an image gets a description, and the next message continues it', async () => {
    const dm = '424242424242424242';
    const nia = user('nia');
    const first = fake.post({ user: nia, dm: true, channelId: dm, attachments: [fake.attachment('dm.png', await png(60, 160, 60), 'image/png')] });
    const answered = async (m: Json) => {
      await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${dm}/messages` && r.body?.message_reference?.message_id === m.id, 10_000, 'the DM reply');
      const reply = fake.botMessages(dm).find((x) => x.message_reference?.message_id === m.id)!;
      return fake.waitFor((r) => r.method === 'PATCH' && r.path === `/channels/${dm}/messages/${reply.id}` && /\n-# \d+ tokens/.test(r.body?.content ?? ''), 30_000, 'the DM answer');
    };
    await answered(first);
    const next = fake.post({ user: nia, dm: true, channelId: dm, content: 'What else?' });
    const done = await answered(next);
    expect(done.body.content).not.toMatch(/⚠️/);
    expect(fake.requests.some((r) => r.path.startsWith(`/channels/${dm}/messages/`) && r.path.endsWith('/threads'))).toBe(false);
  });

  it('a non-image attachment is refused privately at once', async () => {
    const i = fake.slash('describe', { image: fake.attachment('report.pdf', Buffer.from('%PDF-1.4'), 'application/pdf') }, { user: user('ned') });
    const r = await fake.waitFor(callbackOf(i), 5000, 'the refusal');
    expect(r.body.type).toBe(4);
    expect(isEphemeral(r)).toBe(true);
    expect(r.body.data.content).toMatch(/`report\.pdf` is not an image \(application\/pdf\)/);
  });

  it('a 20 MB image is downloaded and answered; one over the limit is refused before (or while) downloading', async () => {
    // 2650 x 2650 RGB, stored uncompressed: ~20 MB on the wire, 7 megapixels decoded.
    const big = await sharp({ create: { width: 2650, height: 2650, channels: 3, background: { r: 10, g: 120, b: 200 } } })
      .png({ compressionLevel: 0 })
      .toBuffer();
    expect(big.byteLength).toBeGreaterThan(20 * MB);
    const i = fake.slash('describe', { image: fake.attachment('huge.png', big, 'image/png') }, { user: user('oli') });
    const done = await fake.waitFor(finalEdit(i), 60_000, 'the answer');
    expect(done.body.content).toMatch(/\n-# \d+ tokens/);

    const declared = fake.attachment('toobig.png', Buffer.alloc(16), 'image/png', { declaredSize: 30 * MB });
    const j = fake.slash('describe', { image: declared }, { user: user('pam') });
    const r = await fake.waitFor(callbackOf(j), 5000, 'the refusal');
    expect(isEphemeral(r)).toBe(true);
    expect(r.body.data.content).toMatch(/too large \(30\.0 MB; the limit is 25 MB\)/);

    const url = fake.file('/attachments/9/9/stream.png', Buffer.alloc(30 * MB), 'image/png');
    const k = fake.slash('describe', { url }, { user: user('quin') });
    const r2 = await fake.waitFor((x) => onWebhook(k, 'POST')(x) && isEphemeral(x), 10_000, 'the refusal');
    expect(r2.body.content).toMatch(/too large/);
  }, 90_000);

  it('a rate-limited user is told privately when to try again', async () => {
    const rex = user('rex');
    const image = fake.attachment('r.png', await png(1, 2, 3), 'image/png');
    for (let n = 0; n < 6; n++) {
      const i = fake.slash('describe', { image }, { user: rex });
      await fake.waitFor(finalEdit(i), 30_000, `answer ${n + 1}`);
    }
    const i = fake.slash('describe', { image }, { user: rex });
    const refusal = await fake.waitFor((r) => onWebhook(i, 'POST')(r) && isEphemeral(r), 10_000, 'the refusal');
    expect(refusal.body.content).toMatch(/too fast\. Try again in \d+ s/);
    await fake.waitFor(onWebhook(i, 'DELETE', '/messages/@original'), 5000, 'the public acknowledgement removed');
  });

  it('shows the place in the queue while waiting, and a full queue answers "busy" privately', async () => {
    // Keep the pool's 4 slots busy and one job waiting, topping up as blockers finish.
    const bytes = new Uint8Array(await png(5, 5, 5));
    let stop = false;
    const blockers: Promise<unknown>[] = [];
    const block = (n: number) => {
      const h = inference.real.run({ id: `blk${n}`, task: 'describe', image: { digest: `blk${n}`, bytes }, conversationId: `blk${n}`, detail: 'brief', priority: 'interactive', maxNewTokens: 150 }, () => undefined);
      blockers.push(h.result.catch(() => undefined).then(() => (stop ? undefined : block(n + 5))));
    };
    for (let n = 0; n < 5; n++) block(n);
    try {
      const a = fake.slash('describe', { image: fake.attachment('qa.png', await png(77, 7, 7), 'image/png') }, { user: user('sam') });
      const queued = await fake.waitFor((r) => onWebhook(a, 'PATCH', '/messages/@original')(r) && /Waiting in line/.test(r.body?.content ?? ''), 10_000, 'the queue position');
      expect(queued.body.content).toMatch(/#2 in the queue|you are next/);
      const b = fake.slash('describe', { image: fake.attachment('qb.png', await png(7, 77, 7), 'image/png') }, { user: user('tia') });
      const busy = await fake.waitFor((r) => onWebhook(b, 'POST')(r) && isEphemeral(r), 10_000, 'the busy refusal');
      expect(busy.body.content).toMatch(/busy/);
      stop = true;
      await fake.waitFor(finalEdit(a), 30_000, 'the queued answer');
    } finally {
      stop = true;
      await Promise.all(blockers);
    }
  });

  it('a 429 from the REST API is waited out and retried by discord.js', async () => {
    const i = fake.slash('describe', { image: fake.attachment('429.png', await png(44, 44, 144), 'image/png') }, { user: user('uma') });
    fake.fault({
      match: (r) => r.method === 'PATCH' && r.path === `/webhooks/${fake.applicationId}/${i.token}/messages/@original`,
      status: 429,
      body: { message: 'You are being rate limited.', retry_after: 0.5, global: false },
      headers: { 'retry-after': '0.5', 'x-ratelimit-scope': 'user', 'x-ratelimit-limit': '5', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset-after': '0.5', 'x-ratelimit-bucket': 'fakebucket' },
    });
    await fake.waitFor(finalEdit(i), 30_000, 'the final edit');
    const edits = fake.requests.filter(onWebhook(i, 'PATCH', '/messages/@original'));
    expect(edits[0].status).toBe(429);
    expect(edits[1].status).toBe(200);
    expect(edits[1].at - edits[0].at).toBeGreaterThanOrEqual(450);
    expect(JSON.stringify(edits[1].body)).toBe(JSON.stringify(edits[0].body)); // the same request, retried
  });

  it('an interaction whose token expired falls back to a normal channel message', async () => {
    const vic = user('vic');
    const i = fake.slash('describe', { image: fake.attachment('late.png', await png(200, 100, 0), 'image/png') }, { user: vic });
    await fake.waitFor(onWebhook(i, 'PATCH', '/messages/@original'), 10_000, 'the first edit');
    fake.expireToken(i.token); // as if 15 minutes had passed
    const notice = await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${fake.channelId}/messages` && (r.body?.content ?? '').startsWith(`<@${vic.id}>`), 30_000, 'the fallback notice');
    expect(notice.body.allowed_mentions).toEqual({ users: [vic.id] });
    const answer = await fake.waitFor((r) => r.method === 'POST' && r.path === `/channels/${fake.channelId}/messages` && /\n-# \d+ tokens/.test(r.body?.content ?? ''), 30_000, 'the answer as a channel message');
    expect(answer.at).toBeGreaterThanOrEqual(notice.at);
  });

  it('a long answer streams at most one edit per second and ends split across messages under 2000 characters', async () => {
    // The tiny model cannot write 2000+ characters (256-token context): a scripted client streams a long markdown answer.
    const para = (k: number) => `Paragraph ${k}: ` + Array.from({ length: 60 }, (_, w) => `word${k}x${w}`).join(' ') + '.';
    const code = '```python\n' + Array.from({ length: 40 }, (_, l) => `print("line ${l} of a long code block")`).join('\n') + '\n```';
    const text = [para(1), para(2), para(3), code, para(4), para(5), para(6)].join('\n\n');
    const chunks = text.match(/[\s\S]{1,60}/g)!;
    inference.override = {
      run(job, onEvent): RunHandle {
        const result = (async () => {
          onEvent({ type: 'queued', position: 1 });
          onEvent({ type: 'started', worker: 'scripted' });
          for (const c of chunks) {
            await new Promise((r) => setTimeout(r, 25));
            onEvent({ type: 'token', text: c });
          }
          return {
            task: job.task, text, finishReason: 'eos' as const, template: 'v1' as const,
            turns: [{ role: 'USER' as const, text: 'q' }, { role: 'ASSISTANT' as const, text }],
            tokens: { prompt: 10, generated: chunks.length },
            timings: { queueMs: 0, imageEncodeMs: 0, firstTokenMs: 25, totalMs: chunks.length * 25, tokensPerSecond: 40 },
            cache: { embedding: false, conversation: false }, worker: 'scripted',
          };
        })();
        return { result, cancel() {} };
      },
      stats: () => inference.real.stats(),
      close: async () => undefined,
    };
    try {
      const i = fake.slash('ask', { question: 'Tell me everything', image: fake.attachment('long.png', await png(3, 3, 3), 'image/png') }, { user: user('wes') });
      // The final state: the original plus follow-ups, the last one carrying the footer.
      await fake.waitFor((r) => r.method !== 'GET' && r.path.startsWith(`/webhooks/${fake.applicationId}/${i.token}`) && /\n-# \d+ tokens/.test(r.body?.content ?? ''), 30_000, 'the footer');
      const hook = fake.webhookRequests(i.token).filter((r) => r.method !== 'GET');
      // Edits come in rounds at most once a second (a round may touch several messages at once).
      const rounds: number[] = [];
      for (const r of hook) if (!rounds.length || r.at - rounds[rounds.length - 1] > 300) rounds.push(r.at);
      for (let k = 1; k < rounds.length; k++) expect(rounds[k] - rounds[k - 1]).toBeGreaterThanOrEqual(950);
      expect(rounds.length).toBeGreaterThanOrEqual(3); // streamed, not just the final text

      const finalContents = fake.replyMessages(i.token).map((m) => m.content as string);
      expect(finalContents.length).toBeGreaterThanOrEqual(2);
      expect(hook.filter((r) => r.method === 'POST').length).toBe(finalContents.length - 1);
      expect(finalContents[finalContents.length - 1]).toMatch(/\n-# \d+ tokens/);
      for (const c of finalContents) {
        expect(c.length).toBeLessThanOrEqual(2000);
        expect((c.match(/```/g) ?? []).length % 2).toBe(0); // code blocks closed and reopened per message
      }
      const joined = finalContents.join('\n');
      expect(joined.startsWith('> Tell me everything\n')).toBe(true);
      for (const k of [1, 3, 6]) for (const w of [0, 31, 59]) expect(joined).toMatch(new RegExp(`\\bword${k}x${w}\\b`)); // no word cut
      expect(joined).toMatch(/print\("line 39 of a long code block"\)/);
    } finally {
      inference.override = undefined;
    }
  });

  it('logged no errors, and never the token', () => {
    expect(errors).toEqual([]);
    expect(warnings.join('\n')).not.toContain('fake-bot-token');
    expect(warnings.some((w) => /interaction token expired/.test(w))).toBe(true);
  });
});
