/**
 * The Slack bot (@slack/bolt): slash commands `/describe`, `/ask`, `/quiz`; mentions with an
 * image; message shortcuts "Describe image" and "Quiz me"; follow-ups in threads Curio answered
 * in; quiz "Reveal answer" / "Another question" buttons. Over HTTP (Events API, every request's
 * signature and timestamp verified by Bolt's receiver) or Socket Mode when an app token is
 * given. Requests are acknowledged at once; the answer is a placeholder in the image's thread,
 * edited as tokens stream (throttled), then the full answer. It uses only the serving core
 * (`Commands`).
 */
import type { AddressInfo, Server } from 'node:net';
import { App, LogLevel, type Logger as BoltLogger, type RespondFn } from '@slack/bolt';
import type { WebClient } from '@slack/web-api';
import type { Redis } from 'ioredis';
import type { Config } from '../../config';
import type { CommandRequest, Commands, ReplyEvent, Running } from '../../core/commands';
import {
  downloadFile,
  downloadLink,
  findRecentImage,
  ImageLookupError,
  imageOfMessage,
  type FetchPolicy,
  type SlackFile,
} from './images';
import { conversationKey, mentions, parseConversationKey, parseMention, parseSlash, stripMention, type Intent, type SlashName } from './parse';
import { ACTION_MORE, ACTION_REVEAL, escapeMrkdwn, parseMoreValue, parseRevealValue, queuePosition, renderReply, renderStatus, truncate } from './render';
import { MemoryEventDeduper, MemoryThreadRegistry, RedisEventDeduper, RedisThreadRegistry, type EventDeduper, type ThreadRegistry } from './state';
import { StreamedReply } from './stream';

/** Structured logger (pino-compatible subset). */
export interface SlackLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface SlackBotOptions {
  commands: Commands;
  config: Config;
  /** xoxb-… (SLACK_BOT_TOKEN). */
  botToken: string;
  /** Verifies HTTP requests (SLACK_SIGNING_SECRET); required unless `appToken` is given. */
  signingSecret?: string;
  /** xapp-… (SLACK_APP_TOKEN): Socket Mode instead of HTTP. */
  appToken?: string;
  /** Web API base URL (tests point it at a fake). */
  slackApiUrl?: string;
  /** HTTP port for the Events API (default 3000; 0 = any free port). */
  port?: number;
  /** Shared Redis: event dedupe and thread registry across bot processes. */
  redis?: Redis;
  deduper?: EventDeduper;
  threads?: ThreadRegistry;
  logger?: SlackLogger;
  /** Minimum time between two edits of a streamed message (default 1000 ms). */
  updateIntervalMs?: number;
  /** Slack's file hosts (receive the bot token). Default files.slack.com. */
  fileHosts?: string[];
  /** Hosts an image link in a slash command may point at. Default: the file hosts. */
  linkHosts?: string[];
  /** Hosts reachable over plain http (loopback fakes in tests). */
  insecureHosts?: string[];
  /** Model name shown in the answer footer. */
  modelName?: string;
  /** Calls auth.test at start (default true): learns the bot's user id. */
  tokenVerification?: boolean;
}

export interface SlackBot {
  app: App;
  /** Starts the HTTP receiver (returns its port) or the Socket Mode connection. */
  start(): Promise<{ port?: number }>;
  /** Stops receiving, cancels what is running and waits for its last message edits. */
  stop(): Promise<void>;
  /** Settles when every request in flight has finished (tests, graceful shutdown). */
  idle(): Promise<void>;
}

/** What the bot registers with Slack: deploy/slack-app-manifest.yaml declares exactly these. */
export const SLASH_COMMANDS = ['/describe', '/ask', '/quiz'] as const;
export const SHORTCUTS = { describe: 'curio_describe', quiz: 'curio_quiz' } as const;
/** Events: mentions; messages for thread follow-ups (channels, private channels, DMs, group DMs). */
export const BOT_EVENTS = ['app_mention', 'message.channels', 'message.groups', 'message.im', 'message.mpim'] as const;
/**
 * Bot scopes, each for what uses it: commands (slash commands, shortcuts); chat:write
 * (chat.postMessage/update/delete/postEphemeral); app_mentions:read (app_mention);
 * *:history (conversations.history/replies for the latest image, and the message.* events);
 * files:read (files.info and downloading url_private).
 */
export const BOT_SCOPES = ['commands', 'chat:write', 'app_mentions:read', 'channels:history', 'groups:history', 'im:history', 'mpim:history', 'files:read'] as const;

const silent: SlackLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** Bolt's logger on top of ours; never below info (Bolt's debug output can carry payloads). */
function boltLogger(log: SlackLogger): BoltLogger {
  const join = (msg: unknown[]) => msg.map((m) => (m instanceof Error ? m.message : typeof m === 'string' ? m : JSON.stringify(m))).join(' ');
  let level = LogLevel.INFO;
  return {
    debug: () => {},
    info: (...msg) => log.info({ component: 'slack' }, join(msg)),
    warn: (...msg) => log.warn({ component: 'slack' }, join(msg)),
    error: (...msg) => log.error({ component: 'slack' }, join(msg)),
    setLevel: (l) => {
      level = l === LogLevel.DEBUG ? LogLevel.INFO : l;
    },
    getLevel: () => level,
    setName: () => {},
  };
}

/** Where a reply goes and whom it is for. */
interface Target {
  channel: string;
  /** The thread; undefined: the reply starts a new thread (image links). */
  threadTs?: string;
  userId: string;
  teamId?: string;
  /** Tells the requester something only they see. */
  notify(text: string): Promise<void>;
  /** Shown above the reply: who asked what (slash commands and shortcuts are invisible). */
  header?: string;
}

type Job = Omit<CommandRequest, 'conversationId' | 'who'>;

function intentJob(intent: Intent, image?: Uint8Array, name?: string): Job {
  const img = image ? { image: { bytes: image, ...(name ? { name } : {}) } } : {};
  if (intent.command === 'describe') return { command: 'describe', detail: intent.detail, ...img };
  if (intent.command === 'ask') return { command: 'ask', text: intent.text, ...img };
  return { command: 'quiz', ...(intent.rounds !== undefined ? { rounds: intent.rounds } : {}), ...img };
}

function describeIntent(intent: Intent): string {
  if (intent.command === 'ask') return `asked: ${escapeMrkdwn(truncate(intent.text, 300))}`;
  if (intent.command === 'quiz') return 'started a quiz';
  return intent.detail === 'detailed' ? 'asked for a detailed description' : 'asked for a description';
}

interface IncomingMessage {
  channel: string;
  channel_type?: string;
  ts: string;
  thread_ts?: string;
  user?: string;
  text?: string;
  files?: SlackFile[];
  team?: string;
}

export function createSlackBot(options: SlackBotOptions): SlackBot {
  const { commands, config } = options;
  const log = options.logger ?? silent;
  const socketMode = Boolean(options.appToken);
  if (!socketMode && !options.signingSecret) throw new Error('Slack: SLACK_SIGNING_SECRET is required for HTTP mode (or set SLACK_APP_TOKEN for Socket Mode)');

  const app = new App({
    token: options.botToken,
    ...(socketMode ? { socketMode: true, appToken: options.appToken } : { signingSecret: options.signingSecret }),
    logger: boltLogger(log),
    logLevel: LogLevel.INFO,
    tokenVerificationEnabled: options.tokenVerification ?? true,
    clientOptions: {
      ...(options.slackApiUrl ? { slackApiUrl: options.slackApiUrl } : {}),
      logger: boltLogger(log),
      logLevel: LogLevel.INFO,
    },
  });

  const ttlMs = config.conversations.idle_ttl_minutes * 60_000;
  const prefix = config.redis.prefix;
  const deduper = options.deduper ?? (options.redis ? new RedisEventDeduper(options.redis, { prefix, logger: log }) : new MemoryEventDeduper());
  const threads = options.threads ?? (options.redis ? new RedisThreadRegistry(options.redis, { prefix, ttlMs, logger: log }) : new MemoryThreadRegistry({ ttlMs }));
  const fileHosts = options.fileHosts ?? ['files.slack.com'];
  const policy: FetchPolicy = {
    fileHosts,
    linkHosts: options.linkHosts ?? fileHosts,
    insecureHosts: options.insecureHosts,
    maxBytes: config.limits.max_image_mb * 1024 * 1024,
    timeoutMs: config.limits.download_timeout_s * 1000,
    botToken: options.botToken,
  };
  const minIntervalMs = options.updateIntervalMs ?? 1000;

  const inFlight = new Set<Promise<void>>();
  const running = new Set<Running>();
  let stopping = false;

  /** Runs a handler's work after the acknowledgement, tracked for idle()/stop(). */
  function track(work: () => Promise<void>): void {
    const p = work()
      .catch((err: unknown) => log.error({ err: (err as Error).message }, 'slack handler failed'))
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  }

  async function claim(key: string): Promise<boolean> {
    const first = await deduper.claim(key);
    if (!first) log.info({ key }, 'slack: duplicate delivery ignored');
    return first;
  }

  function ephemeralTo(client: WebClient, channel: string, user: string, threadTs?: string) {
    return async (text: string) => {
      await client.chat
        .postEphemeral({ channel, user, text, ...(threadTs ? { thread_ts: threadTs } : {}) })
        .catch((err: unknown) => log.warn({ err: apiError(err) }, 'chat.postEphemeral failed'));
    };
  }

  function respondTo(respond: RespondFn) {
    return async (text: string) => {
      await respond({ response_type: 'ephemeral', replace_original: false, text }).catch((err: unknown) => log.warn({ err: (err as Error).message }, 'respond failed'));
    };
  }

  /** Runs one command and renders its reply events into the thread. */
  async function execute(client: WebClient, target: Target, job: Job, extra: { conversationId?: string; roundOffset?: number } = {}): Promise<void> {
    if (stopping) return target.notify('Curio is restarting. Please try again in a minute.');
    const stream = new StreamedReply(client, { channel: target.channel, threadTs: target.threadTs, minIntervalMs, logger: log });
    const header = target.header;
    let placeholder = false;
    if (!target.threadTs) {
      // A new thread: its root is the placeholder, and its ts names the conversation.
      try {
        await stream.show([renderStatus('working', undefined, header)]);
      } catch (err) {
        return target.notify(postFailure(err));
      }
      placeholder = true;
    }
    const conversationId = extra.conversationId ?? conversationKey(target.channel, stream.threadTs!);
    const render = (reply: Parameters<typeof renderReply>[0], final: boolean, stats?: Parameters<typeof renderReply>[1]['stats']) =>
      renderReply(reply, { final, conversationId, header, roundOffset: extra.roundOffset, stats, model: options.modelName });

    let outcome: Promise<void> = Promise.resolve();
    const onEvent = (ev: ReplyEvent) => {
      switch (ev.type) {
        case 'queued':
          placeholder = true;
          stream.update([ev.position > 1 ? renderStatus('queued', queuePosition(ev.position), header) : renderStatus('working', undefined, header)]);
          break;
        case 'started':
          placeholder = true;
          stream.update([renderStatus('working', undefined, header)]);
          break;
        case 'progress':
          placeholder = true;
          stream.update(render(ev.reply, false));
          break;
        case 'done':
          outcome = stream.finish(render(ev.reply, true, ev.stats)).then(() => threads.add(conversationId));
          break;
        case 'refused':
          // Refusals are private: nothing public was said, or the placeholder goes away.
          outcome = (placeholder ? stream.discard() : Promise.resolve()).then(() => target.notify(ev.message));
          break;
        case 'failed':
          outcome = placeholder || ev.code !== 'bad_request' ? stream.finish([renderStatus('error', ev.message, header)]) : target.notify(ev.message);
          break;
      }
    };
    const run = commands.run({ ...job, conversationId, who: { userId: target.userId, channelIds: [target.channel], ...(target.teamId ? { serverId: target.teamId } : {}) } }, onEvent);
    running.add(run);
    try {
      await run.done;
      await outcome;
    } catch (err) {
      log.warn({ err: apiError(err), channel: target.channel }, 'slack: could not deliver the reply');
      if (!stream.hasPosted) await target.notify(postFailure(err));
    } finally {
      running.delete(run);
      await stream.idle();
    }
  }

  /** A new request about an image (mention, DM, shortcut, slash command). */
  async function imageRequest(client: WebClient, target: Target & { threadTs: string }, intent: Intent, file: SlackFile): Promise<void> {
    let bytes: Uint8Array;
    try {
      bytes = await downloadFile(file, policy);
    } catch (err) {
      if (err instanceof ImageLookupError) return target.notify(err.message);
      throw err;
    }
    await execute(client, target, intentJob(intent, bytes, file.name));
  }

  const NO_IMAGE =
    'I don’t see an image. Attach one to a message that mentions me (`@Curio what is this?`), or upload one here and run `/describe`, `/ask` or `/quiz` — they use your most recent image in the channel.';

  /** A message that mentions Curio, or any message in a DM with Curio. */
  async function onMention(client: WebClient, m: IncomingMessage, botUserId?: string): Promise<void> {
    if (!m.user) return;
    const text = stripMention(m.text ?? '', botUserId);
    const threadTs = m.thread_ts ?? m.ts;
    const conversationId = conversationKey(m.channel, threadTs);
    const target: Target & { threadTs: string } = {
      channel: m.channel,
      threadTs,
      userId: m.user,
      teamId: m.team,
      notify: ephemeralTo(client, m.channel, m.user, threadTs),
    };
    let file: SlackFile | undefined;
    try {
      file = await imageOfMessage(client, m.files);
    } catch (err) {
      if (err instanceof ImageLookupError) return target.notify(err.message);
      throw err;
    }
    const intent = parseMention(text);
    if (file) return imageRequest(client, target, intent, file);

    // No image on the message: continue this thread's conversation, or use a recent image.
    const explicit = /^\/?(describe|quiz)\b/i.test(text);
    if (m.thread_ts && !explicit && (await threads.has(conversationId))) {
      if (!text) return target.notify('Write your question after mentioning me, e.g. `@Curio what color is it?`');
      return execute(client, target, { command: 'followup', text });
    }
    let found;
    try {
      found = await findRecentImage(client, { channel: m.channel, threadTs: m.thread_ts, userId: m.user });
    } catch (err) {
      if (err instanceof ImageLookupError) return target.notify(err.message);
      throw err;
    }
    if (!found) return target.notify(NO_IMAGE);
    return imageRequest(client, target, intent, found.file);
  }

  /** A reply in a thread Curio answered in (or a new image there): continues the conversation. */
  async function onThreadMessage(client: WebClient, m: IncomingMessage & { thread_ts: string }): Promise<void> {
    if (!m.user) return;
    const conversationId = conversationKey(m.channel, m.thread_ts);
    const target: Target = { channel: m.channel, threadTs: m.thread_ts, userId: m.user, teamId: m.team, notify: ephemeralTo(client, m.channel, m.user, m.thread_ts) };
    let file: SlackFile | undefined;
    try {
      file = await imageOfMessage(client, m.files);
    } catch (err) {
      if (err instanceof ImageLookupError) return target.notify(err.message);
      throw err;
    }
    const text = (m.text ?? '').trim();
    if (file) {
      // A new image in the thread starts a new conversation about it.
      let bytes: Uint8Array;
      try {
        bytes = await downloadFile(file, policy);
      } catch (err) {
        if (err instanceof ImageLookupError) return target.notify(err.message);
        throw err;
      }
      return execute(client, target, { command: 'followup', image: { bytes, name: file.name }, ...(text ? { text } : {}) }, { conversationId });
    }
    if (!text) return;
    return execute(client, target, { command: 'followup', text }, { conversationId });
  }

  // --- Events -------------------------------------------------------------------------------

  app.event('app_mention', async ({ event, body, client, context }) => {
    const e = event as unknown as IncomingMessage & { subtype?: string; bot_id?: string };
    if (e.bot_id || !e.user) return;
    if (!(await claim(`msg:${body.team_id}:${e.channel}:${e.ts}`))) return;
    track(() => onMention(client, { ...e, team: body.team_id }, context.botUserId));
  });

  app.event('message', async ({ event, body, client, context }) => {
    const e = event as unknown as IncomingMessage & { subtype?: string; bot_id?: string };
    // People's messages only: plain, with files, or thread replies also sent to the channel.
    if (e.subtype !== undefined && e.subtype !== 'file_share' && e.subtype !== 'thread_broadcast') return;
    if (e.bot_id || !e.user || e.user === context.botUserId) return;
    const dm = e.channel_type === 'im';
    // Mentions arrive as app_mention too and are handled there (not in DMs: none is sent).
    if (!dm && mentions(e.text, context.botUserId)) return;
    const inThread = Boolean(e.thread_ts && e.thread_ts !== e.ts);
    if (!dm) {
      if (!inThread || !(await threads.has(conversationKey(e.channel, e.thread_ts!)))) return;
    }
    if (!(await claim(`msg:${body.team_id}:${e.channel}:${e.ts}`))) return;
    const m = { ...e, team: body.team_id };
    if (inThread && (await threads.has(conversationKey(e.channel, e.thread_ts!)))) {
      track(() => onThreadMessage(client, m as IncomingMessage & { thread_ts: string }));
    } else {
      track(() => onMention(client, m, context.botUserId));
    }
  });

  // --- Slash commands -------------------------------------------------------------------------

  for (const command of SLASH_COMMANDS) {
    const name = command.slice(1) as SlashName;
    app.command(command, async ({ command, ack, respond, client }) => {
      await ack();
      track(async () => {
        const notify = respondTo(respond);
        const parsed = parseSlash(name, command.text ?? '');
        if (!parsed.ok) return notify(parsed.message);
        const header = `<@${command.user_id}> used \`/${name}\`${parsed.intent.command === 'ask' ? `: ${escapeMrkdwn(truncate(parsed.intent.text, 300))}` : ''}`;
        const base = { channel: command.channel_id, userId: command.user_id, teamId: command.team_id, notify, header };
        if (parsed.url) {
          let bytes: Uint8Array;
          try {
            bytes = await downloadLink(parsed.url, policy);
          } catch (err) {
            if (err instanceof ImageLookupError) return notify(err.message);
            throw err;
          }
          return execute(client, { ...base, header: `${header} <${parsed.url}|image>` }, intentJob(parsed.intent, bytes, parsed.url));
        }
        let found;
        try {
          found = await findRecentImage(client, { channel: command.channel_id, userId: command.user_id });
        } catch (err) {
          if (err instanceof ImageLookupError) return notify(err.message);
          throw err;
        }
        if (!found) {
          return notify(
            `I couldn’t find an image from you in this channel. Upload one first (or give a link: \`/${name} ${name === 'ask' ? 'what is this? ' : ''}https://files.slack.com/…\`), or mention me in a message with an image.`,
          );
        }
        return imageRequest(client, { ...base, threadTs: found.threadTs }, parsed.intent, found.file);
      });
    });
  }

  // --- Message shortcuts ---------------------------------------------------------------------

  const shortcuts: Array<[string, Intent]> = [
    [SHORTCUTS.describe, { command: 'describe', detail: 'brief' }],
    [SHORTCUTS.quiz, { command: 'quiz' }],
  ];
  for (const [callbackId, intent] of shortcuts) {
    app.shortcut({ type: 'message_action', callback_id: callbackId }, async ({ shortcut, ack, respond, client }) => {
      await ack();
      const s = shortcut as unknown as {
        channel: { id: string };
        user: { id: string; team_id?: string };
        team?: { id: string } | null;
        message: { ts: string; thread_ts?: string; files?: SlackFile[] };
      };
      track(async () => {
        const notify = respondTo(respond);
        let file: SlackFile | undefined;
        try {
          file = await imageOfMessage(client, s.message.files);
        } catch (err) {
          if (err instanceof ImageLookupError) return notify(err.message);
          throw err;
        }
        if (!file) return notify('That message has no image. Use this shortcut on a message with an image file.');
        const target = {
          channel: s.channel.id,
          threadTs: s.message.thread_ts ?? s.message.ts,
          userId: s.user.id,
          teamId: s.team?.id ?? s.user.team_id,
          notify,
          header: `<@${s.user.id}> ${describeIntent(intent)}`,
        };
        await imageRequest(client, target, intent, file);
      });
    });
  }

  // --- Buttons -----------------------------------------------------------------------------------

  interface ActionBody {
    user: { id: string; team_id?: string };
    channel?: { id: string };
    team?: { id: string } | null;
    message?: { ts: string; thread_ts?: string };
    container?: { channel_id?: string; message_ts?: string; thread_ts?: string };
  }

  app.action(ACTION_REVEAL, async ({ ack, body, action, client, respond }) => {
    await ack();
    const b = body as unknown as ActionBody;
    const value = parseRevealValue((action as { value?: string }).value);
    const channel = b.channel?.id ?? b.container?.channel_id;
    if (!value || !channel) return;
    const threadTs = b.message?.thread_ts ?? b.container?.thread_ts ?? b.message?.ts;
    const text = `*Answer ${value.n}:* ${escapeMrkdwn(value.a)}`;
    track(async () => {
      try {
        await client.chat.postEphemeral({ channel, user: b.user.id, text, ...(threadTs ? { thread_ts: threadTs } : {}) });
      } catch {
        await respondTo(respond)(text);
      }
    });
  });

  app.action(ACTION_MORE, async ({ ack, body, action, client, respond }) => {
    await ack();
    const b = body as unknown as ActionBody;
    const value = parseMoreValue((action as { value?: string }).value);
    const key = value && parseConversationKey(value.c);
    const channel = b.channel?.id ?? b.container?.channel_id;
    if (!value || !key || !channel || key.channel !== channel) return;
    track(() =>
      execute(
        client,
        {
          channel,
          threadTs: key.threadTs,
          userId: b.user.id,
          teamId: b.team?.id ?? b.user.team_id,
          notify: respond ? respondTo(respond) : ephemeralTo(client, channel, b.user.id, key.threadTs),
        },
        { command: 'more' },
        { conversationId: value.c, roundOffset: value.n - 1 },
      ),
    );
  });

  app.error(async (err) => {
    log.error({ err: err.message, code: (err as { code?: string }).code }, 'slack: unhandled error');
  });

  const idle = async () => {
    while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
  };

  return {
    app,
    async start() {
      if (socketMode) {
        await app.start();
        log.info({ mode: 'socket' }, 'slack bot connected (Socket Mode)');
        return {};
      }
      const server = (await app.start(options.port ?? 3000)) as unknown as Server;
      const port = (server.address() as AddressInfo | null)?.port;
      log.info({ mode: 'http', port }, 'slack bot listening for events');
      return { port };
    },
    async stop() {
      stopping = true;
      await app.stop().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'slack: stop failed'));
      for (const r of running) r.cancel();
      await Promise.race([idle(), new Promise((r) => setTimeout(r, 10_000).unref())]);
    },
    idle,
  };
}

function apiError(err: unknown): string {
  return (err as { data?: { error?: string } }).data?.error ?? (err as Error).message;
}

function postFailure(err: unknown): string {
  const code = apiError(err);
  if (code === 'not_in_channel' || code === 'channel_not_found') return 'I can’t post in this channel. Add me first (`/invite @Curio`), then try again.';
  return 'I couldn’t post my answer here. Please try again.';
}

export interface SlackEnv {
  botToken: string;
  signingSecret?: string;
  appToken?: string;
  /** HTTP mode: port of the Events API endpoint (SLACK_PORT, default 3000). */
  port: number;
}

/**
 * Slack settings from the environment: SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET (HTTP mode),
 * SLACK_APP_TOKEN (Socket Mode when set), SLACK_PORT. Secrets never come from config files.
 * Undefined when SLACK_BOT_TOKEN is not set (Slack not configured).
 */
export function slackFromEnv(env: NodeJS.ProcessEnv = process.env): SlackEnv | undefined {
  const botToken = env.SLACK_BOT_TOKEN?.trim();
  if (!botToken) return undefined;
  const signingSecret = env.SLACK_SIGNING_SECRET?.trim() || undefined;
  const appToken = env.SLACK_APP_TOKEN?.trim() || undefined;
  if (!signingSecret && !appToken) throw new Error('SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET (HTTP mode) nor SLACK_APP_TOKEN (Socket Mode) is');
  if (!botToken.startsWith('xoxb-')) throw new Error('SLACK_BOT_TOKEN must be a bot token (xoxb-…)');
  if (appToken && !appToken.startsWith('xapp-')) throw new Error('SLACK_APP_TOKEN must be an app-level token (xapp-…)');
  const port = env.SLACK_PORT ? Number(env.SLACK_PORT) : 3000;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`SLACK_PORT must be a port number, not "${env.SLACK_PORT}"`);
  return { botToken, signingSecret, appToken, port };
}
