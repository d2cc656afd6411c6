/**
 * The real Bolt app against a fake Slack on loopback (test/support/fake-slack.ts): signed
 * slash commands, events, shortcuts and button clicks go to Bolt's HTTP receiver; the Web API
 * and the file host are the fake. The bundled model (models/sq-llava-micro) answers for real.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { BOT_EVENTS, BOT_SCOPES, SHORTCUTS, SLASH_COMMANDS, createSlackBot, slackFromEnv, type SlackBot } from '../../../src/adapters/slack/app';
import { ACTION_MORE, ACTION_REVEAL, parseRevealValue } from '../../../src/adapters/slack/render';
import { createApp, type App } from '../../../src/app';
import { bundledModelConfig } from '../../support/model';
import type { Config } from '../../../src/config';
import { Commands } from '../../../src/core/commands';
import { MemoryConversationStore, MemoryImageStore, MemoryRateLimiter } from '../../../src/store/memory';
import {
  APP_TOKEN,
  BOT_TOKEN,
  BOT_USER,
  FakeSlack,
  SIGNING_SECRET,
  blockActionPayload,
  eventBody,
  interactiveBody,
  messageShortcutPayload,
  sendSigned,
  slashCommandBody,
  slashCommandPayload,
  waitFor,
  type FakeMessage,
} from '../../support/fake-slack';

const ROOT = path.resolve(__dirname, '../../..');
const IMAGE = new Uint8Array(fs.readFileSync(path.join(ROOT, 'test/fixtures/golden/image.png')));
const PDF = new TextEncoder().encode('%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n');
const UPDATE_MS = 250;

const FORM = 'application/x-www-form-urlencoded';
const JSON_TYPE = 'application/json';

type Blocks = Array<{ type: string; text?: { text: string }; elements?: Array<{ text: string; action_id?: string; value?: string }>; accessory?: { action_id: string; value: string } }>;

function blocksOf(m: FakeMessage): Blocks {
  return (m.blocks ?? []) as Blocks;
}
const isFinal = (m: FakeMessage) => blocksOf(m).some((b) => b.type === 'context' && b.elements?.some((e) => e.text.startsWith('Curio')));
const sectionsText = (m: FakeMessage) =>
  blocksOf(m)
    .filter((b) => b.type === 'section')
    .map((b) => b.text!.text)
    .join('\n');

let fake: FakeSlack;
let curio: App;
let config: Config;
const logLines: string[] = [];
const logger = {
  debug: (o: object, m: string) => logLines.push(m + JSON.stringify(o)),
  info: (o: object, m: string) => logLines.push(m + JSON.stringify(o)),
  warn: (o: object, m: string) => logLines.push(m + JSON.stringify(o)),
  error: (o: object, m: string) => logLines.push(m + JSON.stringify(o)),
};
const bots: SlackBot[] = [];
const apps: App[] = [];

async function startBot(commands: Commands): Promise<string> {
  const bot = createSlackBot({
    commands,
    config,
    botToken: BOT_TOKEN,
    signingSecret: SIGNING_SECRET,
    slackApiUrl: fake.apiUrl,
    port: 0,
    fileHosts: ['127.0.0.1'],
    insecureHosts: ['127.0.0.1'],
    updateIntervalMs: UPDATE_MS,
    modelName: curio.modelName,
    logger,
  });
  bots.push(bot);
  const { port } = await bot.start();
  return `http://127.0.0.1:${port}/slack/events`;
}

let botUrl: string;

beforeAll(async () => {
  fake = await FakeSlack.start();
  config = bundledModelConfig({
    limits: { per_user: { capacity: 1000, per_minute: 1000 }, per_channel: { capacity: 1000, per_minute: 1000 } },
  });
  curio = await createApp(config, { log: 'silent' });
  apps.push(curio);
  botUrl = await startBot(curio.commands);
}, 60_000);

afterAll(async () => {
  for (const b of bots) await b.stop();
  for (const a of apps) await a.close();
  await fake?.close();
  // Secrets never reach the logs.
  expect(logLines.join('\n')).not.toContain(BOT_TOKEN);
  expect(logLines.join('\n')).not.toContain(SIGNING_SECRET);
});

let channelSeq = 0;
/** A fresh channel with one of the user's images in it. */
function channelWithImage(user = 'U1'): { channel: string; image: FakeMessage } {
  const channel = `C${String(++channelSeq).padStart(6, '0')}`;
  const file = fake.addFile('shapes.png', 'image/png', IMAGE);
  fake.addMessage(channel, { user: 'U9', text: 'someone else', files: [fake.addFile('other.png', 'image/png', IMAGE)] });
  const image = fake.addMessage(channel, { user, text: 'look', files: [file] });
  fake.addMessage(channel, { user, text: 'just text afterwards' });
  return { channel, image };
}

async function slash(command: string, text: string, channel: string, user = 'U1', url = botUrl) {
  const responseUrl = fake.newResponseUrl();
  const res = await sendSigned(url, slashCommandBody({ command, text, user, channel, responseUrl }), FORM);
  return { res, responseUrl };
}

function responsesTo(responseUrl: string) {
  return fake.responses.filter((r) => responseUrl.endsWith(r.path));
}

async function finalIn(channel: string, threadTs: string, count = 1): Promise<FakeMessage[]> {
  const finals = await waitFor(() => {
    const f = fake.botReplies(channel, threadTs).filter(isFinal);
    return f.length >= count && f;
  }, 60_000, `${count} final answer(s) in ${channel}/${threadTs}`);
  for (const b of bots) await b.idle();
  return finals;
}

describe('Slack bot (Bolt HTTP receiver, fake Web API, real model)', () => {
  it('rejects a bad signature and a stale timestamp with 401, and answers the URL check', async () => {
    const { channel } = channelWithImage();
    const before = fake.calls.length;
    const body = slashCommandBody({ command: '/describe', text: '', user: 'U1', channel, responseUrl: fake.newResponseUrl() });
    expect((await sendSigned(botUrl, body, FORM, { secret: 'wrong-secret' })).status).toBe(401);
    expect((await sendSigned(botUrl, body, FORM, { signature: 'v0=deadbeef' })).status).toBe(401);
    expect((await sendSigned(botUrl, body, FORM, { timestamp: Math.floor(Date.now() / 1000) - 6 * 60 })).status).toBe(401);
    const check = await sendSigned(botUrl, JSON.stringify({ type: 'url_verification', challenge: 'abc123', token: 'x' }), JSON_TYPE);
    expect(check.status).toBe(200);
    expect(JSON.parse(check.body)).toEqual({ challenge: 'abc123' });
    await new Promise((r) => setTimeout(r, 200));
    expect(fake.calls.slice(before).filter((c) => c.method !== 'auth.test')).toEqual([]);
  });

  it('/describe: acks at once, answers in the thread of the user’s latest image, streams with throttled chat.update', async () => {
    const { channel, image } = channelWithImage();
    const { res } = await slash('/describe', '', channel);
    expect(res.status).toBe(200);
    expect(res.ms).toBeLessThan(3000);
    expect(res.body).toBe('');
    const [final] = await finalIn(channel, image.ts);
    expect(final.thread_ts).toBe(image.ts);
    expect(sectionsText(final).length).toBeGreaterThan(0);
    expect(blocksOf(final)[0].elements?.[0].text).toBe('<@U1> used `/describe`');
    // Looked the image up with the Web API, downloaded it with the bot token.
    expect(fake.api('conversations.history').at(-1)!.args).toMatchObject({ channel });
    expect(fake.downloads.at(-1)).toMatchObject({ authorization: `Bearer ${BOT_TOKEN}`, status: 200 });
    // One placeholder post, edits at most every UPDATE_MS until the final one.
    const posts = fake.api('chat.postMessage').filter((c) => c.args.channel === channel);
    expect(posts).toHaveLength(1);
    expect(posts[0].args.thread_ts).toBe(image.ts);
    const updates = fake.api('chat.update').filter((c) => c.args.ts === final.ts);
    expect(updates.length).toBeGreaterThan(0);
    const times = [posts[0].at, ...updates.map((u) => u.at)];
    for (let i = 1; i < times.length - 1; i++) expect(times[i] - times[i - 1]).toBeGreaterThanOrEqual(UPDATE_MS - 30);
    expect(updates.at(-1)!.args.blocks).toEqual(final.blocks);
  });

  it('/ask with an image link on an allowed host starts a new thread; other hosts are refused', async () => {
    const channel = `C${String(++channelSeq).padStart(6, '0')}`;
    const file = fake.addFile('linked.png', 'image/png', IMAGE);
    const { res } = await slash('/ask', `what shape is this? <${file.url_private}|linked.png>`, channel);
    expect(res.status).toBe(200);
    const root = await waitFor(() => fake.botMessages(channel)[0], 10_000, 'root post');
    expect(root.thread_ts).toBeUndefined();
    const ts = root.ts;
    const [final] = await finalIn(channel, ts);
    expect(final.ts).toBe(ts);
    expect(blocksOf(final)[0].elements?.[0].text).toContain('used `/ask`: what shape is this?');
    expect(sectionsText(final).length).toBeGreaterThan(0);

    const { responseUrl } = await slash('/ask', 'what? https://evil.example.com/cat.png', channel);
    const [r] = await waitFor(() => responsesTo(responseUrl).length > 0 && responsesTo(responseUrl));
    expect(r.body).toMatchObject({ response_type: 'ephemeral', text: expect.stringContaining('I can only fetch images from 127.0.0.1') });
  });

  it('/quiz: answers hidden behind Reveal buttons; Reveal answers privately; Another question adds a round', async () => {
    const { channel, image } = channelWithImage();
    await slash('/quiz', '1', channel);
    const [quiz] = await finalIn(channel, image.ts);
    const blocks = blocksOf(quiz);
    const reveals = blocks.filter((b) => b.accessory?.action_id === ACTION_REVEAL);
    expect(reveals).toHaveLength(1);
    expect(reveals[0].text!.text).toMatch(/^\*Question 1:\* /);
    const more = blocks.find((b) => b.type === 'actions')!.elements![0];
    expect(more.action_id).toBe(ACTION_MORE);
    const answer = parseRevealValue(reveals[0].accessory!.value)!;
    expect(answer.n).toBe(1);
    expect(sectionsText(quiz)).not.toContain(answer.a);

    const click = (actionId: string, value: string) =>
      sendSigned(botUrl, interactiveBody(blockActionPayload({ user: 'U2', channel, message: quiz, actionId, value, responseUrl: fake.newResponseUrl() })), FORM);
    expect((await click(ACTION_REVEAL, reveals[0].accessory!.value)).status).toBe(200);
    const eph = await waitFor(() => fake.api('chat.postEphemeral').find((c) => c.args.channel === channel));
    expect(eph.args).toMatchObject({ user: 'U2', thread_ts: image.ts, text: `*Answer 1:* ${answer.a.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')}` });

    expect((await click(ACTION_MORE, more.value!)).status).toBe(200);
    const finals = await finalIn(channel, image.ts, 2);
    const next = blocksOf(finals[1]);
    const nextReveal = next.find((b) => b.accessory?.action_id === ACTION_REVEAL);
    // Numbered after the first round; the next "Another question" asks for round 3.
    expect(nextReveal!.text!.text).toMatch(/^\*Question 2:\* /);
    expect(JSON.parse(next.find((b) => b.type === 'actions')!.elements![0].value!)).toMatchObject({ n: 3 });
  });

  it('says clearly when there is no image, and when it cannot read the channel', async () => {
    const channel = `C${String(++channelSeq).padStart(6, '0')}`;
    fake.addMessage(channel, { user: 'U1', text: 'no pictures here' });
    const { responseUrl } = await slash('/describe', '', channel);
    const [r] = await waitFor(() => responsesTo(responseUrl).length > 0 && responsesTo(responseUrl));
    expect(r.body.text).toMatch(/couldn’t find an image from you in this channel/);
    expect(r.body.response_type).toBe('ephemeral');

    const hidden = `C${String(++channelSeq).padStart(6, '0')}`;
    fake.notInChannel.add(hidden);
    const second = await slash('/quiz', '', hidden);
    const [r2] = await waitFor(() => responsesTo(second.responseUrl).length > 0 && responsesTo(second.responseUrl));
    expect(r2.body.text).toMatch(/\/invite @Curio/);

    const usage = await slash('/ask', '', channel);
    const [r3] = await waitFor(() => responsesTo(usage.responseUrl).length > 0 && responsesTo(usage.responseUrl));
    expect(r3.body.text).toMatch(/Usage: `\/ask <question>/);
    expect(fake.api('chat.postMessage').filter((c) => c.args.channel === channel || c.args.channel === hidden)).toEqual([]);
  });

  it('a mention with an image answers in its thread; a reply in that thread continues the conversation', async () => {
    const channel = `C${String(++channelSeq).padStart(6, '0')}`;
    const file = fake.addFile('mine.png', 'image/png', IMAGE);
    const msg = fake.addMessage(channel, { user: 'U1', text: `<@${BOT_USER}> what is this?`, files: [file] });
    const mention = eventBody({ type: 'app_mention', user: 'U1', text: msg.text, ts: msg.ts, channel, files: [file] });
    const res = await sendSigned(botUrl, mention.body, JSON_TYPE);
    expect(res.status).toBe(200);
    // The same message also arrives as a message event: ignored (the mention handles it).
    await sendSigned(botUrl, eventBody({ type: 'message', subtype: 'file_share', channel_type: 'channel', user: 'U1', text: msg.text, ts: msg.ts, channel, files: [file] }).body, JSON_TYPE);
    const [first] = await finalIn(channel, msg.ts);
    expect(first.thread_ts).toBe(msg.ts);

    const reply = fake.addMessage(channel, { user: 'U2', text: 'and what colour is it?', thread_ts: msg.ts });
    await sendSigned(botUrl, eventBody({ type: 'message', channel_type: 'channel', user: 'U2', text: reply.text, ts: reply.ts, thread_ts: msg.ts, parent_user_id: 'U1', channel }).body, JSON_TYPE);
    const finals = await finalIn(channel, msg.ts, 2);
    expect(finals[1].thread_ts).toBe(msg.ts);
    expect(sectionsText(finals[1]).length).toBeGreaterThan(0);
    expect(fake.api('chat.postMessage').filter((c) => c.args.channel === channel)).toHaveLength(2);

    // A reply in a thread Curio never answered in is ignored.
    const other = fake.addMessage(channel, { user: 'U3', text: 'unrelated' });
    const otherReply = fake.addMessage(channel, { user: 'U2', text: 'hello', thread_ts: other.ts });
    await sendSigned(botUrl, eventBody({ type: 'message', channel_type: 'channel', user: 'U2', text: 'hello', ts: otherReply.ts, thread_ts: other.ts, channel }).body, JSON_TYPE);
    await new Promise((r) => setTimeout(r, 300));
    for (const b of bots) await b.idle();
    expect(fake.botReplies(channel, other.ts)).toEqual([]);
    expect(fake.api('chat.postEphemeral').filter((c) => c.args.channel === channel)).toEqual([]);
  });

  it('a retried event is answered once', async () => {
    const channel = `C${String(++channelSeq).padStart(6, '0')}`;
    const file = fake.addFile('retry.png', 'image/png', IMAGE);
    const msg = fake.addMessage(channel, { user: 'U1', text: `<@${BOT_USER}>`, files: [file] });
    const ev = eventBody({ type: 'app_mention', user: 'U1', text: msg.text, ts: msg.ts, channel, files: [file] });
    const results = await Promise.all([
      sendSigned(botUrl, ev.body, JSON_TYPE),
      sendSigned(botUrl, ev.body, JSON_TYPE, { retryNum: 1 }),
      sendSigned(botUrl, ev.body, JSON_TYPE, { retryNum: 2 }),
    ]);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
    await finalIn(channel, msg.ts);
    await new Promise((r) => setTimeout(r, 300));
    await sendSigned(botUrl, ev.body, JSON_TYPE, { retryNum: 3 });
    await new Promise((r) => setTimeout(r, 300));
    for (const b of bots) await b.idle();
    expect(fake.api('chat.postMessage').filter((c) => c.args.channel === channel)).toHaveLength(1);
    expect(fake.botReplies(channel, msg.ts)).toHaveLength(1);
  });

  it('in a DM an image needs no mention, and a corrupt image gets a clear error in its thread', async () => {
    const dm = 'D0000001';
    const file = fake.addFile('dm.png', 'image/png', IMAGE);
    const msg = fake.addMessage(dm, { user: 'U6', text: 'what is this?', files: [file] });
    await sendSigned(botUrl, eventBody({ type: 'message', subtype: 'file_share', channel_type: 'im', user: 'U6', text: msg.text, ts: msg.ts, channel: dm, files: [file] }).body, JSON_TYPE);
    const [answer] = await finalIn(dm, msg.ts);
    expect(answer.thread_ts).toBe(msg.ts);

    const broken = fake.addFile('broken.png', 'image/png', new TextEncoder().encode('not really a png'));
    const bad = fake.addMessage(dm, { user: 'U6', text: 'and this?', files: [broken] });
    await sendSigned(botUrl, eventBody({ type: 'message', subtype: 'file_share', channel_type: 'im', user: 'U6', text: bad.text, ts: bad.ts, channel: dm, files: [broken] }).body, JSON_TYPE);
    const [error] = await waitFor(() => fake.botReplies(dm, bad.ts).filter((m) => sectionsText(m).startsWith(':warning:')).length > 0 && fake.botReplies(dm, bad.ts));
    for (const b of bots) await b.idle();
    expect(fake.botReplies(dm, bad.ts)).toHaveLength(1);
    expect(sectionsText(error)).toMatch(/^:warning: .*not an image/);
  });

  it('a mention with a non-image file says it is not an image', async () => {
    const channel = `C${String(++channelSeq).padStart(6, '0')}`;
    const file = fake.addFile('notes.pdf', 'application/pdf', PDF);
    const msg = fake.addMessage(channel, { user: 'U1', text: `<@${BOT_USER}> what is this?`, files: [file] });
    await sendSigned(botUrl, eventBody({ type: 'app_mention', user: 'U1', text: msg.text, ts: msg.ts, channel, files: [file] }).body, JSON_TYPE);
    const eph = await waitFor(() => fake.api('chat.postEphemeral').find((c) => c.args.channel === channel));
    expect(eph.args).toMatchObject({ user: 'U1', thread_ts: msg.ts, text: expect.stringContaining('“notes.pdf” is not an image (PDF)') });
    expect(fake.api('chat.postMessage').filter((c) => c.args.channel === channel)).toEqual([]);
    expect(fake.downloads.filter((d) => d.path.includes(file.id))).toEqual([]);
  });

  it('message shortcuts “Describe image” and “Quiz me” use files.info; a message without an image is told so', async () => {
    const { channel, image } = channelWithImage('U4');
    const shortcut = (callbackId: string, message: FakeMessage) => {
      const responseUrl = fake.newResponseUrl();
      return sendSigned(botUrl, interactiveBody(messageShortcutPayload({ callbackId, user: 'U5', channel, message, responseUrl })), FORM).then((res) => ({ res, responseUrl }));
    };
    const d = await shortcut('curio_describe', image);
    expect(d.res.status).toBe(200);
    const [described] = await finalIn(channel, image.ts);
    expect(blocksOf(described)[0].elements?.[0].text).toBe('<@U5> asked for a description');
    expect(fake.api('files.info').map((c) => c.args.file)).toContain(image.files![0].id);

    await shortcut('curio_quiz', image);
    const finals = await finalIn(channel, image.ts, 2);
    expect(blocksOf(finals[1]).filter((b) => b.accessory?.action_id === ACTION_REVEAL).length).toBeGreaterThan(0);

    const plain = fake.addMessage(channel, { user: 'U4', text: 'no image' });
    const none = await shortcut('curio_describe', plain);
    const [r] = await waitFor(() => responsesTo(none.responseUrl).length > 0 && responsesTo(none.responseUrl));
    expect(r.body).toMatchObject({ response_type: 'ephemeral', text: expect.stringContaining('That message has no image') });
  });

  it('a full queue is refused privately with “busy”', async () => {
    const busyConfig = bundledModelConfig({ inference: { max_queue: 0 } });
    const busy = await createApp(busyConfig, { log: 'silent' });
    apps.push(busy);
    const url = await startBot(busy.commands);
    const { channel } = channelWithImage();
    const { responseUrl } = await slash('/describe', 'detailed', channel, 'U1', url);
    const [r] = await waitFor(() => responsesTo(responseUrl).length > 0 && responsesTo(responseUrl), 20_000);
    expect(r.body).toMatchObject({ response_type: 'ephemeral', text: expect.stringMatching(/busy/i) });
    for (const b of bots) await b.idle();
    expect(fake.api('chat.postMessage').filter((c) => c.args.channel === channel)).toEqual([]);
  });

  it('a user over the rate limit is told privately when to try again', async () => {
    const limited = new Commands({
      inference: curio.inference,
      conversations: new MemoryConversationStore({ idleTtlMs: 60_000 }),
      images: new MemoryImageStore({ maxBytes: 1 << 24, ttlMs: 60_000 }),
      limiter: new MemoryRateLimiter(),
      limits: { maxTextLength: 1000, maxQuizRounds: 5, perUser: { capacity: 1, refillPerSecond: 1 / 60 }, perChannel: { capacity: 100, refillPerSecond: 1 } },
    });
    const url = await startBot(limited);
    const { channel, image } = channelWithImage('U7');
    await slash('/describe', '', channel, 'U7', url);
    await finalIn(channel, image.ts);
    const { responseUrl } = await slash('/ask', 'is it red?', channel, 'U7', url);
    const [r] = await waitFor(() => responsesTo(responseUrl).length > 0 && responsesTo(responseUrl));
    expect(r.body).toMatchObject({ response_type: 'ephemeral', text: expect.stringMatching(/too fast\. Try again in \d+ s/) });
    expect(fake.api('chat.postMessage').filter((c) => c.args.channel === channel)).toHaveLength(1);
  });
});

describe('Slack bot over Socket Mode', () => {
  it('connects with the app token and answers a slash command and a mention sent as envelopes', async () => {
    fake.enableSocketMode();
    const bot = createSlackBot({
      commands: curio.commands,
      config,
      botToken: BOT_TOKEN,
      appToken: APP_TOKEN,
      slackApiUrl: fake.apiUrl,
      fileHosts: ['127.0.0.1'],
      insecureHosts: ['127.0.0.1'],
      updateIntervalMs: UPDATE_MS,
      logger,
    });
    bots.push(bot);
    expect(await bot.start()).toEqual({});
    expect(fake.socketConnected).toBe(true);
    expect(fake.api('apps.connections.open').at(-1)!.token).toBe(APP_TOKEN);

    const { channel, image } = channelWithImage();
    const ack = await fake.sendEnvelope('slash_commands', slashCommandPayload({ command: '/ask', text: 'what is it?', user: 'U1', channel, responseUrl: fake.newResponseUrl() }));
    expect(ack).toEqual({});
    const [answer] = await finalIn(channel, image.ts);
    expect(blocksOf(answer)[0].elements?.[0].text).toBe('<@U1> used `/ask`: what is it?');

    const file = fake.addFile('sock.png', 'image/png', IMAGE);
    const msg = fake.addMessage(channel, { user: 'U2', text: `<@${BOT_USER}> quiz`, files: [file] });
    const { body } = eventBody({ type: 'app_mention', user: 'U2', text: msg.text, ts: msg.ts, channel, files: [file] });
    await fake.sendEnvelope('events_api', JSON.parse(body));
    const [quiz] = await finalIn(channel, msg.ts);
    expect(blocksOf(quiz).some((b) => b.accessory?.action_id === ACTION_REVEAL)).toBe(true);
  });
});

describe('Slack app manifest', () => {
  const manifest = YAML.parse(fs.readFileSync(path.join(ROOT, 'deploy/slack-app-manifest.yaml'), 'utf8'));

  it('declares exactly the scopes, commands, shortcuts and events the bot uses', () => {
    expect([...manifest.oauth_config.scopes.bot].sort()).toEqual([...BOT_SCOPES].sort());
    expect(manifest.oauth_config.scopes.user).toBeUndefined();
    expect(manifest.features.slash_commands.map((c: { command: string }) => c.command)).toEqual([...SLASH_COMMANDS]);
    expect(manifest.features.shortcuts.map((s: { callback_id: string; type: string }) => [s.type, s.callback_id])).toEqual([
      ['message', SHORTCUTS.describe],
      ['message', SHORTCUTS.quiz],
    ]);
    expect([...manifest.settings.event_subscriptions.bot_events].sort()).toEqual([...BOT_EVENTS].sort());
    expect(manifest.settings.interactivity.is_enabled).toBe(true);
    // One endpoint for everything, where Bolt's receiver listens.
    const urls = [manifest.settings.event_subscriptions.request_url, manifest.settings.interactivity.request_url, ...manifest.features.slash_commands.map((c: { url: string }) => c.url)];
    for (const u of urls) expect(new URL(u).pathname).toBe('/slack/events');
  });

  it('reads its secrets from the environment only', () => {
    expect(slackFromEnv({})).toBeUndefined();
    expect(() => slackFromEnv({ SLACK_BOT_TOKEN: 'xoxb-1' })).toThrow(/SLACK_SIGNING_SECRET/);
    expect(slackFromEnv({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_SIGNING_SECRET: 's' })).toEqual({ botToken: 'xoxb-1', signingSecret: 's', port: 3000 });
    expect(slackFromEnv({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_APP_TOKEN: 'xapp-1', SLACK_PORT: '0' })).toMatchObject({ appToken: 'xapp-1', port: 0 });
    expect(() => slackFromEnv({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_APP_TOKEN: 'xoxb-2' })).toThrow(/xapp/);
  });
});
