/**
 * The Discord adapter: a discord.js gateway client that turns slash commands, context-menu
 * commands, buttons, mentions and thread messages into core `Commands` requests, and streams
 * the replies back by editing messages (at most about once a second).
 *
 * Conversations: a new conversation is keyed `discord:<id of Curio's reply message>`, and the
 * follow-up thread is created on that message. A thread started from a message has the
 * message's id, so every message in the thread (`discord:<thread id>`) continues the same
 * conversation without any lookup table. A new image posted in the thread starts a new
 * conversation under the same key. Outside threads (DMs, other people's threads), replying to
 * one of Curio's messages continues its conversation.
 *
 * Interactions are acknowledged at once (deferred), then edited; their token lasts 15 minutes,
 * after which (or when Discord says the token is gone) the reply moves to normal channel
 * messages. Refusals and errors are ephemeral where Discord allows it.
 */
import {
  ChannelType,
  Client,
  DiscordAPIError,
  Events,
  GatewayIntentBits,
  MessageFlags,
  MessageType,
  Partials,
  ThreadAutoArchiveDuration,
  type Attachment,
  type ButtonInteraction,
  type ChatInputCommandInteraction,
  type Interaction,
  type Message,
  type MessageContextMenuCommandInteraction,
  type RepliableInteraction,
  type SendableChannels,
} from 'discord.js';
import { LRUCache } from 'lru-cache';
import type { CommandName, CommandRequest, Commands, Reply, ReplyEvent, Running } from '../../core/commands';
import type { Requester } from '../../core/access';
import type { Config } from '../../config';
import { DownloadError, downloadImage } from '../shared/download';
import { COMMAND, OPTION } from './commands';
import { parseMoreButtonId, plain, renderReply, revealText, REVEAL_ID, statusText, threadName, type DiscordPayload } from './render';
import { MessageList, ThrottledReply } from './stream';

export interface BotLogger {
  debug?(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface DiscordBotOptions {
  commands: Commands;
  config: Config;
  /** Bot token (env DISCORD_TOKEN). Never logged. */
  token: string;
  /** Application id (env DISCORD_APPLICATION_ID), for interaction webhooks. */
  applicationId: string;
  /** Discord API base URL, e.g. `http://127.0.0.1:PORT/api` for a fake (tests). */
  restApi?: string;
  logger?: BotLogger;
  /** Hosts images may be downloaded from, besides Discord's CDN (tests: the fake's host). */
  extraImageHosts?: string[];
  /** Hosts that may be fetched over plain http (loopback fakes only). */
  insecureImageHosts?: string[];
  /** Least time between two edits of a streamed reply (default 1000 ms). */
  editIntervalMs?: number;
  /** Lifetime of an interaction token (default 15 min); replies move to channel messages after it. */
  interactionTokenMs?: number;
  /** Time allowed to connect and receive READY (default 30 s). */
  readyTimeoutMs?: number;
}

export interface DiscordBot {
  readonly client: Client;
  start(): Promise<void>;
  /** Cancels running requests and disconnects. */
  stop(): Promise<void>;
}

export const DISCORD_CDN_HOSTS = ['cdn.discordapp.com', 'media.discordapp.net'];

/** Gateway intents Curio needs. MessageContent is privileged: enable it in the developer portal. */
export const DISCORD_INTENTS = [GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessages, GatewayIntentBits.MessageContent, GatewayIntentBits.DirectMessages];

const MB = 1024 * 1024;
const IMAGE_EXT = /\.(png|jpe?g|webp|gif|bmp|tiff?|avif|heic)$/i;
const silentLogger: BotLogger = { info() {}, warn() {}, error() {} };

/** A short message for the user; nothing went wrong on Curio's side. */
class UserError extends Error {}

interface ImageRef {
  url: string;
  name?: string;
  size?: number;
  contentType?: string | null;
}

const conversationKey = (id: string) => `discord:${id}`;

/** Discord API errors that mean the interaction token can no longer be used. */
function interactionGone(err: unknown): boolean {
  return err instanceof DiscordAPIError && (err.code === 50027 /* invalid webhook token */ || err.code === 10015 /* unknown webhook */ || err.code === 10062 /* unknown interaction */ || err.code === 10008 /* unknown message */);
}

function describeError(err: unknown): object {
  if (err instanceof DiscordAPIError) return { status: err.status, code: err.code, method: err.method, message: err.message };
  return { message: err instanceof Error ? err.message : String(err) };
}

const NO_MENTIONS = { parse: [] as never[], repliedUser: false };

// ---- where a reply is shown ----------------------------------------------------------------

/** The messages of one reply, plus what to do when it is refused before anything was shown. */
abstract class ReplySurface extends MessageList {
  /** The first message, once it exists (the thread is created on it). */
  primary: Message | undefined;
  /** Makes sure the first message exists (an acknowledgement or a placeholder) and returns its id. */
  abstract open(): Promise<string>;
  /** Shows a refusal or error instead of an answer (privately where possible). */
  abstract refuse(message: string): Promise<void>;
}

/** An interaction's reply (deferred, then edited) and its follow-ups; falls back to channel
 * messages when the interaction token expires. */
class InteractionSurface extends ReplySurface {
  private readonly ids: string[] = [];
  private fallback: { channel: SendableChannels; messages: Message[] } | undefined;
  private readonly deadline: number;

  constructor(
    private readonly interaction: RepliableInteraction,
    tokenMs: number,
    private readonly log: BotLogger,
  ) {
    super();
    // A margin so an edit never starts just before the token dies.
    this.deadline = interaction.createdTimestamp + tokenMs - Math.min(30_000, tokenMs / 10);
  }

  async open(): Promise<string> {
    if (!this.interaction.deferred && !this.interaction.replied) {
      try {
        await this.interaction.deferReply();
      } catch (err) {
        if (!interactionGone(err)) throw err;
        this.log.warn({ ...describeError(err), interaction: this.interaction.id }, 'discord: interaction expired before it was acknowledged; replying in the channel');
        await this.moveToChannel(false);
        return this.primary!.id;
      }
    }
    try {
      this.primary = await this.interaction.fetchReply();
    } catch (err) {
      if (!interactionGone(err)) throw err;
      await this.moveToChannel(true);
      return this.primary!.id;
    }
    this.ids[0] = this.primary.id;
    return this.primary.id;
  }

  override async sync(payloads: DiscordPayload[]): Promise<void> {
    if (!this.fallback && Date.now() >= this.deadline) await this.moveToChannel(true);
    try {
      await super.sync(payloads);
    } catch (err) {
      if (this.fallback || !interactionGone(err)) throw err;
      this.log.warn({ ...describeError(err), interaction: this.interaction.id }, 'discord: interaction token expired; continuing in channel messages');
      await this.moveToChannel(true);
      await super.sync(payloads);
    }
  }

  private async moveToChannel(explain: boolean): Promise<void> {
    const channel = this.interaction.channel ?? (await this.interaction.client.channels.fetch(this.interaction.channelId!).catch(() => null));
    if (!channel || !channel.isSendable()) throw new Error('interaction expired and its channel is not reachable');
    const note = explain
      ? `<@${this.interaction.user.id}> this took longer than Discord lets me update an interaction reply, so here is the answer:`
      : `<@${this.interaction.user.id}> here is your answer:`;
    const first = await channel.send({ content: note, allowedMentions: { users: [this.interaction.user.id] } });
    this.fallback = { channel, messages: [] };
    if (!this.primary) this.primary = first;
    this.reset();
  }

  protected async create(index: number, p: DiscordPayload): Promise<void> {
    if (this.fallback) {
      this.fallback.messages[index] = await this.fallback.channel.send({ ...p, allowedMentions: NO_MENTIONS });
    } else if (index === 0) {
      await this.interaction.editReply({ ...p, allowedMentions: NO_MENTIONS });
    } else {
      const m = await this.interaction.followUp({ ...p, allowedMentions: NO_MENTIONS });
      this.ids[index] = m.id;
    }
  }

  protected async edit(index: number, p: DiscordPayload): Promise<void> {
    if (this.fallback) await this.fallback.messages[index].edit({ ...p, allowedMentions: NO_MENTIONS });
    else await this.interaction.editReply({ ...p, allowedMentions: NO_MENTIONS, message: index === 0 ? '@original' : this.ids[index] });
  }

  protected async remove(index: number): Promise<void> {
    if (this.fallback) await this.fallback.messages[index].delete();
    else await this.interaction.deleteReply(index === 0 ? '@original' : this.ids[index]);
  }

  async refuse(message: string): Promise<void> {
    if (this.fallback) {
      await this.sync([plain(`⚠️ ${message}`)]);
      return;
    }
    try {
      // The acknowledgement was public; the refusal is private.
      if (this.interaction.deferred || this.interaction.replied) {
        await this.interaction.deleteReply().catch(() => undefined);
        await this.interaction.followUp({ content: message, flags: MessageFlags.Ephemeral, allowedMentions: NO_MENTIONS });
      } else {
        await this.interaction.reply({ content: message, flags: MessageFlags.Ephemeral, allowedMentions: NO_MENTIONS });
      }
    } catch (err) {
      if (!interactionGone(err)) throw err;
      await this.moveToChannel(false);
      await this.sync([plain(`⚠️ ${message}`)]);
    }
  }
}

/** A reply to a user's message: a placeholder reply, edited, then more messages if needed. */
class MessageSurface extends ReplySurface {
  private readonly messages: Message[] = [];

  constructor(private readonly source: Message) {
    super();
  }

  async open(): Promise<string> {
    if (!this.primary) {
      this.primary = await this.source.reply({ ...plain(statusText({ started: true })), allowedMentions: NO_MENTIONS });
      this.messages[0] = this.primary;
    }
    return this.primary.id;
  }

  protected async create(index: number, p: DiscordPayload): Promise<void> {
    if (index === 0 && this.messages[0]) await this.messages[0].edit({ ...p, allowedMentions: NO_MENTIONS });
    else {
      const channel = this.source.channel;
      if (!channel.isSendable()) throw new Error('channel is not sendable');
      this.messages[index] = await channel.send({ ...p, allowedMentions: NO_MENTIONS });
    }
  }

  protected async edit(index: number, p: DiscordPayload): Promise<void> {
    await this.messages[index].edit({ ...p, allowedMentions: NO_MENTIONS });
  }

  protected async remove(index: number): Promise<void> {
    await this.messages[index].delete();
  }

  async refuse(message: string): Promise<void> {
    if (this.messages[0]) await this.sync([plain(`⚠️ ${message}`)]);
    else await this.source.reply({ content: `⚠️ ${message}`, allowedMentions: NO_MENTIONS });
  }
}

// ---- the bot -----------------------------------------------------------------------------

interface ServeParams {
  surface: ReplySurface;
  request: Omit<CommandRequest, 'conversationId' | 'image'>;
  image?: ImageRef;
  /** The conversation key; default: the key of the reply's first message. */
  key?: string;
  header?: string;
  quizOffset?: number;
  /** Create the follow-up thread on the reply's first message when done. */
  thread: boolean;
  /** Channel/guild/user, for logs. */
  context: object;
  /** DM channel id: the DM continues this conversation without a reply. */
  dmChannel?: string;
}

export function createDiscordBot(options: DiscordBotOptions): DiscordBot {
  const { commands, config } = options;
  const log = options.logger ?? silentLogger;
  const client = new Client({
    intents: DISCORD_INTENTS,
    partials: [Partials.Channel], // DM channels arrive uncached
    allowedMentions: NO_MENTIONS,
    ...(options.restApi ? { rest: { api: options.restApi } } : {}),
  });
  const maxBytes = config.limits.max_image_mb * MB;
  const imageHosts = [...DISCORD_CDN_HOSTS, ...(options.extraImageHosts ?? [])];
  const tokenMs = options.interactionTokenMs ?? 15 * 60_000;
  const running = new Set<Running>();
  const pending = new Set<Promise<unknown>>();
  /** Curio's reply messages → their conversation (for replies to them outside threads). */
  const messageKeys = new LRUCache<string, string>({ max: 50_000 });
  /** DM channel → its latest conversation (a DM needs no reply to continue). */
  const dmKeys = new LRUCache<string, string>({ max: 10_000 });

  const botId = () => client.user?.id ?? options.applicationId;

  // -- images --

  function isImage(a: { contentType?: string | null; name?: string | null }): boolean {
    if (a.contentType) return a.contentType.toLowerCase().startsWith('image/');
    return IMAGE_EXT.test(a.name ?? '');
  }

  function attachmentRef(a: Attachment): ImageRef {
    if (!isImage(a)) {
      throw new UserError(`\`${a.name}\` is not an image${a.contentType ? ` (${a.contentType})` : ''}. Please attach a PNG, JPEG, WebP or GIF.`);
    }
    if (a.size > maxBytes) {
      throw new UserError(`That image is too large (${(a.size / MB).toFixed(1)} MB; the limit is ${config.limits.max_image_mb} MB).`);
    }
    return { url: a.url, name: a.name, size: a.size, contentType: a.contentType };
  }

  /** The images of a message: image attachments, then embedded images (link previews). */
  function messageImages(m: Message): ImageRef[] {
    const refs: ImageRef[] = [];
    for (const a of m.attachments.values()) if (isImage(a)) refs.push({ url: a.url, name: a.name, size: a.size, contentType: a.contentType });
    for (const e of m.embeds) {
      const img = e.image ?? e.thumbnail;
      const url = img?.proxyURL ?? img?.url;
      if (url) refs.push({ url, name: url });
    }
    return refs;
  }

  async function fetchImage(ref: ImageRef): Promise<{ bytes: Uint8Array; name?: string }> {
    if (ref.size !== undefined && ref.size > maxBytes) {
      throw new UserError(`That image is too large (${(ref.size / MB).toFixed(1)} MB; the limit is ${config.limits.max_image_mb} MB).`);
    }
    try {
      const bytes = await downloadImage(ref.url, {
        allowedHosts: imageHosts,
        insecureHosts: options.insecureImageHosts,
        maxBytes,
        timeoutMs: config.limits.download_timeout_s * 1000,
      });
      return { bytes, name: ref.name };
    } catch (err) {
      if (err instanceof DownloadError) throw new UserError(err.message);
      throw err;
    }
  }

  // -- requesters --

  function requesterOf(userId: string, channel: { id: string; parentId?: string | null; isThread?: () => boolean } | null, channelId: string, guildId: string | null, roleIds: string[]): Requester {
    // Core rate-limits the last channel: for a thread, that is its parent (no escaping the channel's limit by opening threads).
    const channelIds = channel?.isThread?.() && channel.parentId ? [channelId, channel.parentId] : [channelId];
    return { userId, roleIds, channelIds, ...(guildId ? { serverId: guildId } : {}) };
  }

  function interactionRoles(i: Interaction): string[] {
    const m = i.member;
    if (!m) return [];
    if (Array.isArray(m.roles)) return m.roles;
    return [...m.roles.cache.keys()].filter((id) => id !== i.guildId);
  }

  function whoOf(i: Interaction): Requester {
    return requesterOf(i.user.id, i.channel, i.channelId ?? i.user.id, i.guildId, interactionRoles(i));
  }

  function whoOfMessage(m: Message): Requester {
    const roles = m.member ? [...m.member.roles.cache.keys()].filter((id) => id !== m.guildId) : [];
    return requesterOf(m.author.id, m.channel, m.channelId, m.guildId, roles);
  }

  const isCurioThread = (channel: Interaction['channel'] | Message['channel'] | null): boolean =>
    !!channel && channel.isThread() && channel.ownerId === client.user?.id;

  const canHaveThreads = (channel: Interaction['channel'] | Message['channel'] | null): boolean =>
    !!channel && (channel.type === ChannelType.GuildText || channel.type === ChannelType.GuildAnnouncement);

  // -- one request, start to finish --

  function track<T>(p: Promise<T>): Promise<T> {
    pending.add(p);
    p.finally(() => pending.delete(p)).catch(() => undefined);
    return p;
  }

  async function serve(p: ServeParams): Promise<void> {
    const t0 = Date.now();
    const { surface } = p;
    // Acknowledge first (Discord's 3 s), download while the "thinking" state shows.
    const [opened, fetched] = await Promise.allSettled([surface.open(), p.image ? fetchImage(p.image) : Promise.resolve(undefined)]);
    if (opened.status === 'rejected') throw opened.reason;
    if (fetched.status === 'rejected') {
      const err = fetched.reason;
      if (!(err instanceof UserError)) throw err;
      log.info({ ...p.context, command: p.request.command, outcome: 'bad_image', message: err.message }, 'discord: request refused');
      await surface.refuse(err.message);
      return;
    }
    const replyId = opened.value;
    const image = fetched.value;

    const key = p.key ?? conversationKey(replyId);
    // Replies to this message (outside threads) continue its conversation; so does a DM.
    messageKeys.set(replyId, key);
    if (p.dmChannel) dmKeys.set(p.dmChannel, key);
    const throttle = new ThrottledReply(surface, {
      intervalMs: options.editIntervalMs,
      onError: (err) => log.warn({ ...describeError(err), ...p.context }, 'discord: streaming edit failed'),
    });
    let queued: number | undefined;
    let final: { reply: Reply; stats?: Extract<ReplyEvent, { type: 'done' }>['stats'] } | undefined;
    let problem: Extract<ReplyEvent, { type: 'refused' | 'failed' }> | undefined;
    let lastRendered: DiscordPayload[] | undefined;
    const render = (reply: Reply, done?: { stats?: Extract<ReplyEvent, { type: 'done' }>['stats'] }) =>
      renderReply(reply, { header: p.header, quizOffset: p.quizOffset, conversationKey: replyKeyId(key), final: done });

    const run = commands.run({ ...p.request, conversationId: key, ...(image ? { image } : {}) }, (ev) => {
      switch (ev.type) {
        case 'queued':
          queued = ev.position;
          throttle.update([plain(statusText({ queued, header: p.header }))]);
          break;
        case 'started':
          throttle.update([plain(statusText({ started: true, header: p.header }))]);
          break;
        case 'progress':
          lastRendered = render(ev.reply);
          throttle.update(lastRendered);
          break;
        case 'done':
          final = { reply: ev.reply, stats: ev.stats };
          break;
        case 'refused':
        case 'failed':
          problem = ev;
          break;
      }
    });
    running.add(run);
    try {
      await run.done;
    } finally {
      running.delete(run);
    }

    if (final) {
      const payloads = render(final.reply, { stats: final.stats });
      await throttle.finish(payloads);
      log.info({ ...p.context, command: p.request.command, outcome: 'done', ms: Date.now() - t0, tokens: final.stats?.tokens, messages: payloads.length }, 'discord: replied');
      if (p.thread && surface.primary) await openThread(surface.primary, final.reply, p.context);
      return;
    }
    await throttle.stop();
    const ev = problem ?? { type: 'failed' as const, code: 'internal', message: 'Something went wrong on my side. Please try again.' };
    log.info({ ...p.context, command: p.request.command, outcome: ev.type === 'refused' ? ev.reason : ev.code, ms: Date.now() - t0 }, 'discord: request not answered');
    if (lastRendered && ev.type === 'failed') {
      // Keep what was written so far, marked as cut short.
      const parts = lastRendered.map((x) => ({ ...x }));
      const last = parts[parts.length - 1];
      last.content = `${last.content.replace(/\n-# ✍️ writing…$/, '')}\n-# ⚠️ ${ev.message}`.slice(0, 2000);
      await surface.sync(parts).catch((err) => log.warn({ ...describeError(err), ...p.context }, 'discord: could not mark a cut-short reply'));
      return;
    }
    await surface.refuse(ev.message);
  }

  /** The id part of a conversation key, for button custom ids. */
  function replyKeyId(key: string): string {
    return key.startsWith('discord:') ? key.slice('discord:'.length) : key;
  }

  async function openThread(message: Message, reply: Reply, context: object): Promise<void> {
    try {
      const channel = message.channel ?? (await client.channels.fetch(message.channelId));
      if (!canHaveThreads(channel) || message.hasThread) return;
      await message.startThread({ name: threadName(reply, 'Curio'), autoArchiveDuration: ThreadAutoArchiveDuration.OneDay });
    } catch (err) {
      log.warn({ ...describeError(err), ...context }, 'discord: could not create the follow-up thread (missing Create Public Threads permission?)');
    }
  }

  // -- interactions --

  async function onSlashCommand(i: ChatInputCommandInteraction): Promise<void> {
    const name = i.commandName;
    if (name !== COMMAND.describe && name !== COMMAND.ask && name !== COMMAND.quiz) return;
    const context = { interaction: i.id, guild: i.guildId, channel: i.channelId, user: i.user.id, command: name };
    const surface = new InteractionSurface(i, tokenMs, log);
    let image: ImageRef;
    try {
      const attachment = i.options.getAttachment(OPTION.image);
      const url = i.options.getString(OPTION.url)?.trim();
      if (attachment && url) throw new UserError('Please give either an image or a link, not both.');
      if (attachment) image = attachmentRef(attachment);
      else if (url) image = { url, name: url };
      else throw new UserError('Please attach an image (or give a link to one on Discord).');
    } catch (err) {
      if (!(err instanceof UserError)) throw err;
      await surface.refuse(err.message);
      return;
    }
    const command = name as CommandName;
    const question = i.options.getString(OPTION.question) ?? undefined;
    const request: ServeParams['request'] = {
      command,
      who: whoOf(i),
      ...(question !== undefined ? { text: question } : {}),
      ...(command === 'describe' ? { detail: (i.options.getString(OPTION.detail) as 'brief' | 'detailed' | null) ?? 'brief' } : {}),
      ...(command === 'quiz' ? { rounds: i.options.getInteger(OPTION.questions) ?? Math.min(3, config.limits.max_quiz_questions) } : {}),
    };
    const inThread = isCurioThread(i.channel);
    await serve({
      surface,
      request,
      image,
      key: inThread ? conversationKey(i.channelId) : undefined,
      header: question ? `> ${question.replace(/\s+/g, ' ').slice(0, 200)}` : undefined,
      thread: !inThread && canHaveThreads(i.channel),
      context,
    });
  }

  async function onMessageMenu(i: MessageContextMenuCommandInteraction): Promise<void> {
    const name = i.commandName;
    if (name !== COMMAND.describeMessage && name !== COMMAND.quizMessage) return;
    const context = { interaction: i.id, guild: i.guildId, channel: i.channelId, user: i.user.id, command: name };
    const surface = new InteractionSurface(i, tokenMs, log);
    const images = messageImages(i.targetMessage);
    if (images.length === 0) {
      await surface.refuse('That message has no image. Use this on a message with an image attached.');
      return;
    }
    const several = images.length > 1 ? ` (the first of its ${images.length} images)` : '';
    const inThread = isCurioThread(i.channel);
    await serve({
      surface,
      request:
        name === COMMAND.quizMessage
          ? { command: 'quiz', who: whoOf(i), rounds: Math.min(3, config.limits.max_quiz_questions) }
          : { command: 'describe', who: whoOf(i), detail: 'brief' },
      image: images[0],
      key: inThread ? conversationKey(i.channelId) : undefined,
      header: `-# About ${i.targetMessage.url}${several}`,
      thread: !inThread && canHaveThreads(i.channel),
      context,
    });
  }

  async function onButton(i: ButtonInteraction): Promise<void> {
    if (i.customId === REVEAL_ID) {
      await i.reply({ content: revealText(i.message.content), flags: MessageFlags.Ephemeral, allowedMentions: NO_MENTIONS });
      return;
    }
    const more = parseMoreButtonId(i.customId);
    if (!more) return;
    const context = { interaction: i.id, guild: i.guildId, channel: i.channelId, user: i.user.id, command: 'more' };
    await serve({
      surface: new InteractionSurface(i, tokenMs, log),
      request: { command: 'more', who: whoOf(i) },
      key: conversationKey(more.conversationKey),
      quizOffset: more.roundsSoFar,
      thread: false,
      context,
    });
  }

  async function onInteraction(i: Interaction): Promise<void> {
    try {
      if (i.isChatInputCommand()) await onSlashCommand(i);
      else if (i.isMessageContextMenuCommand()) await onMessageMenu(i);
      else if (i.isButton()) await onButton(i);
    } catch (err) {
      log.error({ ...describeError(err), interaction: i.id }, 'discord: interaction failed');
      if (i.isRepliable()) {
        const content = 'Something went wrong on my side. Please try again.';
        const send = i.deferred || i.replied ? i.followUp({ content, flags: MessageFlags.Ephemeral }) : i.reply({ content, flags: MessageFlags.Ephemeral });
        await send.catch(() => undefined);
      }
    }
  }

  // -- messages --

  function stripMentions(text: string): string {
    return text.replace(new RegExp(`<@!?${botId()}>`, 'g'), ' ').replace(/\s+/g, ' ').trim();
  }

  /** The conversation a reply to one of Curio's messages continues, if any. */
  async function referencedConversation(m: Message): Promise<{ key?: string; message?: Message }> {
    const refId = m.reference?.messageId;
    if (!refId) return {};
    const known = messageKeys.get(refId);
    let ref: Message | undefined;
    try {
      ref = await m.fetchReference();
    } catch {
      return known ? { key: known } : {};
    }
    if (known) return { key: known, message: ref };
    if (ref.author.id === botId()) return { key: conversationKey(ref.id), message: ref };
    return { message: ref };
  }

  async function onMessage(m: Message): Promise<void> {
    if (m.author.bot || m.webhookId || m.system) return;
    if (m.type !== MessageType.Default && m.type !== MessageType.Reply) return;
    const context = { message: m.id, guild: m.guildId, channel: m.channelId, user: m.author.id };
    const text = stripMentions(m.content);
    const images = messageImages(m);
    const nonImage = m.attachments.find((a) => !isImage(a));
    const who = whoOfMessage(m);
    const fromImage = (key: string | undefined, thread: boolean, header?: string, dm?: boolean) => {
      const image = images[0];
      return serve({
        surface: new MessageSurface(m),
        request: text ? { command: 'ask', who, text } : { command: 'describe', who, detail: 'brief' },
        image,
        key,
        header: images.length > 1 ? `-# Using the first of ${images.length} images.${header ? ` ${header}` : ''}` : header,
        thread,
        context: { ...context, command: text ? 'ask' : 'describe' },
        ...(dm ? { dmChannel: m.channelId } : {}),
      });
    };
    const followUp = (key: string) =>
      serve({ surface: new MessageSurface(m), request: { command: 'followup', who, text }, key, thread: false, context: { ...context, command: 'followup' } });
    const refuse = (message: string) => new MessageSurface(m).refuse(message);

    // 1. In one of Curio's threads every message continues the thread's conversation; a new image starts a new one.
    if (isCurioThread(m.channel)) {
      const key = conversationKey(m.channelId);
      if (images.length) return fromImage(key, false);
      if (nonImage) return refuse(`\`${nonImage.name}\` is not an image. Please post a PNG, JPEG, WebP or GIF.`);
      if (text) return followUp(key);
      return;
    }

    const isDM = m.channel.type === ChannelType.DM;
    const mentioned = m.mentions.users.has(botId());
    if (!isDM && !mentioned) {
      // Outside threads and DMs Curio only listens when spoken to: a reply to one of its messages.
      if (m.reference?.messageId && messageKeys.has(m.reference.messageId) && text) return followUp(messageKeys.get(m.reference.messageId)!);
      return;
    }

    // 2. A mention (or a DM) with an image: /describe, or /ask with the message as the question.
    if (images.length) {
      return fromImage(undefined, !isDM && canHaveThreads(m.channel), undefined, isDM);
    }
    if (nonImage) return refuse(`\`${nonImage.name}\` is not an image. Please attach a PNG, JPEG, WebP or GIF.`);

    // 3. A reply to a message: to one of Curio's (continue it) or to a message with an image (use it).
    const ref = await referencedConversation(m);
    if (ref.key && text) return followUp(ref.key);
    if (ref.message) {
      const refImages = messageImages(ref.message);
      if (refImages.length) {
        return serve({
          surface: new MessageSurface(m),
          request: text ? { command: 'ask', who, text } : { command: 'describe', who, detail: 'brief' },
          image: refImages[0],
          header: refImages.length > 1 ? `-# Using the first of ${refImages.length} images.` : undefined,
          thread: !isDM && canHaveThreads(m.channel),
          context: { ...context, command: text ? 'ask' : 'describe' },
          ...(isDM ? { dmChannel: m.channelId } : {}),
        });
      }
    }
    // 4. A DM without an image continues the DM's latest conversation.
    if (isDM && text && dmKeys.has(m.channelId)) return followUp(dmKeys.get(m.channelId)!);
    await refuse('Attach an image and mention me (or reply to a message with an image), or use `/describe`, `/ask` or `/quiz`.');
  }

  client.on(Events.InteractionCreate, (i) => void track(onInteraction(i)));
  client.on(Events.MessageCreate, (m) => {
    void track(
      onMessage(m).catch((err) => {
        log.error({ ...describeError(err), message: m.id }, 'discord: message handling failed');
      }),
    );
  });
  client.on(Events.Error, (err) => log.error({ message: err.message }, 'discord: client error'));
  client.on(Events.Warn, (message) => log.warn({ message }, 'discord: client warning'));

  return {
    client,
    async start() {
      const ready = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('Discord did not send READY in time')), options.readyTimeoutMs ?? 30_000);
        client.once(Events.ClientReady, () => {
          clearTimeout(timer);
          resolve();
        });
      });
      await client.login(options.token);
      await ready;
      log.info({ user: client.user?.tag, guilds: client.guilds.cache.size }, 'discord: connected');
    },
    async stop() {
      for (const r of running) r.cancel();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.allSettled([...pending]), new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
      await client.destroy();
    },
  };
}
