/**
 * A fake Discord on loopback for driving the real discord.js client in tests: an HTTP server for
 * the REST API (point discord.js at it with `rest: { api: fake.api }`), the gateway WebSocket it
 * announces from `GET /gateway/bot`, and a CDN that serves attachment files. Tests inject
 * gateway events (INTERACTION_CREATE, MESSAGE_CREATE) with real payload shapes and inspect the
 * REST requests discord.js sends back. Faults (429s, expired interaction tokens) are scripted.
 *
 * Gotchas (runtime-findings §5): a 204 must carry no JSON content-type, `@original` arrives as
 * `%40original`, and without zlib-sync the gateway is uncompressed JSON.
 */
import { EventEmitter } from 'node:events';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

const DISCORD_EPOCH = 1420070400000n;
let counter = 0n;

/** A snowflake for now (or `at`): its timestamp is what discord.js reads as createdTimestamp. */
export function snowflake(at = Date.now()): string {
  counter = (counter + 1n) % 4096n;
  return ((BigInt(at) - DISCORD_EPOCH) << 22n | counter).toString();
}

export interface RecordedRequest {
  method: string;
  /** Path after `/api/v10`, decoded (`%40original` → `@original`). */
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  body: any;
  at: number;
  status: number;
}

export interface FakeUser {
  id: string;
  username: string;
  global_name: string | null;
  discriminator: string;
  avatar: null;
  bot?: boolean;
}

export interface FakeFault {
  match: (r: { method: string; path: string }) => boolean;
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
  /** How many times to answer with this fault (default 1). */
  times?: number;
}

export type Json = Record<string, any>;
/** An interaction as dispatched (id and token are what tests need). */
export type FakeInteraction = Json & { id: string; token: string };

export function user(username: string, id = snowflake()): FakeUser {
  return { id, username, global_name: username[0].toUpperCase() + username.slice(1), discriminator: '0', avatar: null };
}

export class FakeDiscord extends EventEmitter {
  readonly applicationId = snowflake();
  readonly botUser: FakeUser = { ...user('curio', this.applicationId), bot: true };
  readonly guildId = snowflake();
  readonly channelId = snowflake();
  readonly requests: RecordedRequest[] = [];
  /** Every message that exists, by id (created by users or by the bot). */
  readonly messages = new Map<string, Json>();
  readonly channels = new Map<string, Json>();
  /** Interaction token → id of its original response message. */
  readonly originals = new Map<string, string>();
  /** Interaction token → ids of its follow-up messages, in order. */
  readonly followUps = new Map<string, string[]>();
  /** Interaction token → the channel it was used in. */
  private readonly tokenChannels = new Map<string, string>();
  identify: Json | undefined;
  private readonly files = new Map<string, { body: Buffer; contentType: string }>();
  private readonly expired = new Set<string>();
  private readonly faults: FakeFault[] = [];
  private readonly sockets = new Set<WebSocket>();
  private seq = 0;
  private server!: Server;
  private wss!: WebSocketServer;
  port = 0;
  private readyResolve!: () => void;
  /** Resolves when a client has identified and received READY + GUILD_CREATE. */
  readonly ready = new Promise<void>((r) => (this.readyResolve = r));

  static async start(): Promise<FakeDiscord> {
    const fake = new FakeDiscord();
    await fake.listen();
    return fake;
  }

  get api(): string {
    return `http://127.0.0.1:${this.port}/api`;
  }

  get host(): string {
    return '127.0.0.1';
  }

  private async listen(): Promise<void> {
    const text = { id: this.channelId, type: 0, guild_id: this.guildId, name: 'general', position: 0, permission_overwrites: [], parent_id: null, nsfw: false, topic: null, last_message_id: null, rate_limit_per_user: 0 };
    this.channels.set(this.channelId, text);
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ message: String(err), code: 0 }));
      });
    });
    this.wss = new WebSocketServer({ server: this.server });
    this.wss.on('connection', (ws) => this.onSocket(ws));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.terminate();
    await new Promise<void>((r) => this.wss.close(() => r()));
    this.server.closeAllConnections?.();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  // ---- scripting ------------------------------------------------------------------------

  /** Answer matching requests with an error (e.g. a 429) before letting them through. */
  fault(f: FakeFault): void {
    this.faults.push({ times: 1, ...f });
  }

  /** Makes an interaction's token unusable, as after Discord's 15 minutes. */
  expireToken(token: string): void {
    this.expired.add(token);
  }

  /** Serves a file from the fake CDN; returns an attachment object as Discord sends it. */
  attachment(filename: string, bytes: Buffer | Uint8Array, contentType: string, o: { declaredSize?: number; width?: number; height?: number } = {}): Json {
    const id = snowflake();
    const path = `/attachments/${this.channelId}/${id}/${filename}`;
    this.files.set(path, { body: Buffer.from(bytes), contentType });
    const url = `http://127.0.0.1:${this.port}${path}?ex=ffffffff&is=00000000&hm=abcdef&`;
    return {
      id,
      filename,
      size: o.declaredSize ?? bytes.byteLength,
      url,
      proxy_url: url,
      content_type: contentType,
      ...(o.width ? { width: o.width, height: o.height } : {}),
    };
  }

  /** Serves a file at a path (for image URL options); returns its URL. */
  file(path: string, bytes: Buffer | Uint8Array, contentType: string): string {
    this.files.set(path, { body: Buffer.from(bytes), contentType });
    return `http://127.0.0.1:${this.port}${path}`;
  }

  // ---- gateway ---------------------------------------------------------------------------

  private send(ws: WebSocket, payload: Json): void {
    ws.send(JSON.stringify(payload));
  }

  private onSocket(ws: WebSocket): void {
    this.sockets.add(ws);
    ws.on('close', () => this.sockets.delete(ws));
    this.send(ws, { op: 10, d: { heartbeat_interval: 41250 }, s: null, t: null });
    ws.on('message', (raw) => {
      const msg = JSON.parse(raw.toString()) as Json;
      if (msg.op === 1) this.send(ws, { op: 11, d: null, s: null, t: null });
      else if (msg.op === 2) {
        this.identify = msg.d;
        this.dispatchTo(ws, 'READY', {
          v: 10,
          user: this.botUser,
          guilds: [{ id: this.guildId, unavailable: true }],
          session_id: 'fake-session',
          resume_gateway_url: `ws://127.0.0.1:${this.port}`,
          shard: [0, 1],
          application: { id: this.applicationId, flags: 0 },
          private_channels: [],
          presences: [],
        });
        this.dispatchTo(ws, 'GUILD_CREATE', this.guildPayload());
        this.readyResolve();
      }
    });
  }

  private guildPayload(): Json {
    const now = new Date().toISOString();
    return {
      id: this.guildId,
      name: 'Test Server',
      icon: null,
      owner_id: snowflake(),
      roles: [{ id: this.guildId, name: '@everyone', permissions: '2248473465835073', position: 0, color: 0, hoist: false, managed: false, mentionable: false, flags: 0 }],
      channels: [...this.channels.values()].filter((c) => c.type === 0),
      threads: [],
      members: [{ user: this.botUser, roles: [], joined_at: now, deaf: false, mute: false, flags: 0 }],
      member_count: 2,
      joined_at: now,
      large: false,
      unavailable: false,
      emojis: [],
      stickers: [],
      features: [],
      voice_states: [],
      presences: [],
      stage_instances: [],
      guild_scheduled_events: [],
      premium_tier: 0,
      preferred_locale: 'en-US',
      system_channel_id: null,
      afk_channel_id: null,
      afk_timeout: 300,
      verification_level: 0,
      default_message_notifications: 0,
      explicit_content_filter: 0,
      mfa_level: 0,
      nsfw_level: 0,
      premium_progress_bar_enabled: false,
    };
  }

  private dispatchTo(ws: WebSocket, t: string, d: Json): void {
    this.send(ws, { op: 0, t, s: ++this.seq, d });
  }

  /** Sends a gateway event to every connected client. */
  dispatch(t: string, d: Json): void {
    for (const ws of this.sockets) this.dispatchTo(ws, t, d);
  }

  // ---- users acting ---------------------------------------------------------------------

  private member(u: FakeUser, roles: string[] = []): Json {
    return { user: u, roles, joined_at: new Date().toISOString(), deaf: false, mute: false, flags: 0, nick: null, avatar: null, premium_since: null, pending: false, permissions: '2248473465835073', communication_disabled_until: null };
  }

  private channelPayload(channelId: string): Json {
    return this.channels.get(channelId) ?? { id: channelId, type: 0, guild_id: this.guildId };
  }

  private interactionBase(u: FakeUser, channelId: string, createdAt?: number): FakeInteraction {
    const token = `tok-${snowflake()}-${Math.random().toString(36).slice(2)}`;
    this.tokenChannels.set(token, channelId);
    return {
      id: snowflake(createdAt),
      application_id: this.applicationId,
      token,
      version: 1,
      guild_id: this.guildId,
      guild: { id: this.guildId, locale: 'en-US', features: [] },
      channel_id: channelId,
      channel: this.channelPayload(channelId),
      member: this.member(u),
      app_permissions: '2248473465835073',
      locale: 'en-US',
      guild_locale: 'en-US',
      entitlements: [],
      authorizing_integration_owners: { '0': this.guildId },
      context: 0,
      attachment_size_limit: 10 * 1024 * 1024,
    };
  }

  /** A slash command; `options` like `{ image: attachment, detail: 'brief' }`. Returns the interaction. */
  slash(name: string, options: Record<string, string | number | Json>, o: { user: FakeUser; channelId?: string; createdAt?: number }): FakeInteraction {
    const attachments: Record<string, Json> = {};
    const opts = Object.entries(options).map(([k, v]) => {
      if (typeof v === 'object') {
        attachments[v.id] = v;
        return { name: k, type: 11, value: v.id };
      }
      return { name: k, type: typeof v === 'number' ? 4 : 3, value: v };
    });
    const interaction = {
      ...this.interactionBase(o.user, o.channelId ?? this.channelId, o.createdAt),
      type: 2,
      data: { id: snowflake(), name, type: 1, options: opts, ...(Object.keys(attachments).length ? { resolved: { attachments } } : {}) },
    };
    this.dispatch('INTERACTION_CREATE', interaction);
    return interaction as FakeInteraction;
  }

  /** A message context-menu command on `target`. */
  messageMenu(name: string, target: Json, o: { user: FakeUser; channelId?: string }): FakeInteraction {
    const interaction = {
      ...this.interactionBase(o.user, o.channelId ?? target.channel_id),
      type: 2,
      data: { id: snowflake(), name, type: 3, target_id: target.id, resolved: { messages: { [target.id]: target } } },
    };
    this.dispatch('INTERACTION_CREATE', interaction);
    return interaction as FakeInteraction;
  }

  /** A click on a button of `message`. */
  click(message: Json, customId: string, o: { user: FakeUser }): FakeInteraction {
    const interaction = {
      ...this.interactionBase(o.user, message.channel_id),
      type: 3,
      message,
      data: { custom_id: customId, component_type: 2 },
    };
    this.dispatch('INTERACTION_CREATE', interaction);
    return interaction as FakeInteraction;
  }

  /** A user posts a message (optionally mentioning the bot, replying to a message, in a thread). */
  post(o: { user: FakeUser; content?: string; attachments?: Json[]; channelId?: string; mentionBot?: boolean; replyTo?: Json; embeds?: Json[]; dm?: boolean }): Json {
    const channelId = o.channelId ?? this.channelId;
    if (o.dm) {
      const message: Json = {
        id: snowflake(), channel_id: channelId, channel_type: 1, author: o.user, content: o.content ?? '', timestamp: new Date().toISOString(), edited_timestamp: null, tts: false,
        mention_everyone: false, mentions: [], mention_roles: [], attachments: o.attachments ?? [], embeds: [], pinned: false, type: 0, flags: 0, components: [],
      };
      this.messages.set(message.id, message);
      this.dispatch('MESSAGE_CREATE', message);
      return message;
    }
    const mentions = o.mentionBot ? [this.botUser] : [];
    const message: Json = {
      id: snowflake(),
      channel_id: channelId,
      guild_id: this.guildId,
      author: o.user,
      member: { roles: [], joined_at: new Date().toISOString(), deaf: false, mute: false, flags: 0 },
      content: (o.mentionBot ? `<@${this.botUser.id}> ` : '') + (o.content ?? ''),
      timestamp: new Date().toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions,
      mention_roles: [],
      attachments: o.attachments ?? [],
      embeds: o.embeds ?? [],
      pinned: false,
      type: o.replyTo ? 19 : 0,
      flags: 0,
      components: [],
      ...(o.replyTo ? { message_reference: { type: 0, message_id: o.replyTo.id, channel_id: o.replyTo.channel_id, guild_id: this.guildId }, referenced_message: o.replyTo } : {}),
    };
    this.messages.set(message.id, message);
    this.dispatch('MESSAGE_CREATE', message);
    return message;
  }

  // ---- REST ------------------------------------------------------------------------------

  private async readBody(req: IncomingMessage): Promise<any> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    if (raw.length === 0) return undefined;
    const type = req.headers['content-type'] ?? '';
    if (type.startsWith('application/json')) return JSON.parse(raw.toString('utf8'));
    if (type.startsWith('multipart/form-data')) {
      const m = /name="payload_json"(?:\r\n[^\r\n]*)*\r\n\r\n([\s\S]*?)\r\n--/.exec(raw.toString('utf8'));
      return m ? JSON.parse(m[1]) : { multipart: true };
    }
    return raw.toString('utf8');
  }

  private json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): number {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
    return status;
  }

  private noContent(res: ServerResponse): number {
    res.writeHead(204); // no content-type: discord.js would try to parse an empty JSON body
    res.end();
    return 204;
  }

  /** Waits for a request matching `pred` (already recorded or future). */
  waitFor(pred: (r: RecordedRequest) => boolean, timeoutMs = 30_000, what = 'request'): Promise<RecordedRequest> {
    const found = this.requests.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('request', on);
        reject(new Error(`timed out waiting for ${what}; saw:\n${this.requests.map((r) => `${r.method} ${r.path} ${r.status}`).join('\n')}`));
      }, timeoutMs);
      const on = (r: RecordedRequest) => {
        if (!pred(r)) return;
        clearTimeout(timer);
        this.off('request', on);
        resolve(r);
      };
      this.on('request', on);
    });
  }

  private newMessage(channelId: string, body: Json, extra: Json = {}): Json {
    const ch = this.channels.get(channelId);
    const message: Json = {
      id: snowflake(),
      channel_id: channelId,
      ...(ch?.guild_id ? { guild_id: ch.guild_id } : {}),
      author: this.botUser,
      content: body.content ?? '',
      timestamp: new Date().toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions: [],
      mention_roles: [],
      attachments: [],
      embeds: body.embeds ?? [],
      components: body.components ?? [],
      pinned: false,
      type: body.message_reference ? 19 : 0,
      flags: body.flags ?? 0,
      ...(body.message_reference ? { message_reference: { type: 0, channel_id: channelId, ...body.message_reference } } : {}),
      ...extra,
    };
    this.messages.set(message.id, message);
    return message;
  }

  private edit(message: Json, body: Json): Json {
    if ('content' in body) message.content = body.content ?? '';
    if ('components' in body) message.components = body.components ?? [];
    if ('embeds' in body) message.embeds = body.embeds ?? [];
    if (body.flags !== undefined) message.flags = body.flags;
    message.flags = (message.flags ?? 0) & ~128; // no longer "thinking"
    message.edited_timestamp = new Date().toISOString();
    return message;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', `http://127.0.0.1:${this.port}`);
    if (req.method === 'GET' && this.files.has(url.pathname)) {
      const f = this.files.get(url.pathname)!;
      res.writeHead(200, { 'content-type': f.contentType, 'content-length': String(f.body.length) });
      res.end(f.body);
      return;
    }
    const body = await this.readBody(req);
    const path = decodeURIComponent(url.pathname.replace(/^\/api\/v\d+/, ''));
    const method = req.method ?? 'GET';
    const record: RecordedRequest = { method, path, query: url.searchParams, headers: req.headers, body, at: Date.now(), status: 0 };
    record.status = this.respond(method, path, url, body, res);
    this.requests.push(record);
    this.emit('request', record);
  }

  private respond(method: string, path: string, url: URL, body: any, res: ServerResponse): number {
    const fault = this.faults.find((f) => (f.times ?? 1) > 0 && f.match({ method, path }));
    if (fault) {
      fault.times = (fault.times ?? 1) - 1;
      return this.json(res, fault.status, fault.body ?? {}, fault.headers);
    }
    let m: RegExpExecArray | null;

    if (method === 'GET' && path === '/gateway/bot') {
      return this.json(res, 200, { url: `ws://127.0.0.1:${this.port}`, shards: 1, session_start_limit: { total: 1000, remaining: 999, reset_after: 0, max_concurrency: 1 } });
    }
    if ((m = /^\/interactions\/(\d+)\/([^/]+)\/callback$/.exec(path)) && method === 'POST') {
      const token = m[2];
      const channelId = this.tokenChannels.get(token) ?? this.channelId;
      if (body.type === 4 || body.type === 5) {
        const flags = (body.data?.flags ?? 0) | (body.type === 5 ? 128 : 0);
        const msg = this.newMessage(channelId, { ...(body.data ?? {}), flags }, { webhook_id: this.applicationId, application_id: this.applicationId, type: 20 });
        this.originals.set(token, msg.id);
      }
      if (url.searchParams.get('with_response') === 'true') {
        const id = this.originals.get(token);
        return this.json(res, 200, { interaction: { id: m[1], type: 2 }, resource: { type: body.type, ...(id ? { message: this.messages.get(id) } : {}) } });
      }
      return this.noContent(res);
    }
    if ((m = /^\/webhooks\/(\d+)\/([^/]+)(?:\/messages\/([^/]+))?$/.exec(path))) {
      const [, , token, which] = m;
      if (this.expired.has(token)) return this.json(res, 401, { message: 'Invalid Webhook Token', code: 50027 });
      if (!which && method === 'POST') {
        const msg = this.newMessage(this.tokenChannels.get(token) ?? this.channelId, body, { webhook_id: this.applicationId, application_id: this.applicationId, type: 20 });
        this.followUps.set(token, [...(this.followUps.get(token) ?? []), msg.id]);
        return this.json(res, 200, msg);
      }
      const id = which === '@original' ? this.originals.get(token) : which;
      const msg = id && this.messages.get(id);
      if (!msg) return this.json(res, 404, { message: 'Unknown Message', code: 10008 });
      if (method === 'GET') return this.json(res, 200, msg);
      if (method === 'PATCH') return this.json(res, 200, this.edit(msg, body));
      if (method === 'DELETE') {
        this.messages.delete(msg.id);
        return this.noContent(res);
      }
    }
    if ((m = /^\/channels\/(\d+)\/messages\/(\d+)\/threads$/.exec(path)) && method === 'POST') {
      const [, channelId, messageId] = m;
      const thread = {
        id: messageId, // a thread started from a message has the message's id
        type: 11,
        guild_id: this.guildId,
        parent_id: channelId,
        owner_id: this.botUser.id,
        name: body.name,
        last_message_id: null,
        rate_limit_per_user: 0,
        message_count: 0,
        member_count: 1,
        flags: 0,
        thread_metadata: { archived: false, auto_archive_duration: body.auto_archive_duration ?? 1440, archive_timestamp: new Date().toISOString(), locked: false, create_timestamp: new Date().toISOString() },
        member: { id: messageId, user_id: this.botUser.id, join_timestamp: new Date().toISOString(), flags: 0 },
      };
      this.channels.set(thread.id, thread);
      this.dispatch('THREAD_CREATE', { ...thread, newly_created: true });
      return this.json(res, 201, thread);
    }
    if ((m = /^\/channels\/(\d+)\/messages$/.exec(path)) && method === 'POST') {
      return this.json(res, 200, this.newMessage(m[1], body));
    }
    if ((m = /^\/channels\/(\d+)\/messages\/(\d+)$/.exec(path))) {
      const msg = this.messages.get(m[2]);
      if (!msg) return this.json(res, 404, { message: 'Unknown Message', code: 10008 });
      if (method === 'GET') return this.json(res, 200, msg);
      if (method === 'PATCH') return this.json(res, 200, this.edit(msg, body));
      if (method === 'DELETE') {
        this.messages.delete(msg.id);
        return this.noContent(res);
      }
    }
    if ((m = /^\/channels\/(\d+)$/.exec(path)) && method === 'GET') {
      const ch = this.channels.get(m[1]);
      return ch ? this.json(res, 200, ch) : this.json(res, 404, { message: 'Unknown Channel', code: 10003 });
    }
    if ((m = /^\/applications\/(\d+)(?:\/guilds\/(\d+))?\/commands$/.exec(path)) && method === 'PUT') {
      const out = (body as Json[]).map((c) => ({ ...c, id: snowflake(), application_id: m![1], version: snowflake(), ...(m![2] ? { guild_id: m![2] } : {}) }));
      return this.json(res, 200, out);
    }
    return this.json(res, 404, { message: `fake discord: no route for ${method} ${path}`, code: 0 });
  }

  // ---- queries for assertions -----------------------------------------------------------

  /** Requests on an interaction's webhook (edits and follow-ups), in order. */
  webhookRequests(token: string): RecordedRequest[] {
    return this.requests.filter((r) => r.path.startsWith(`/webhooks/${this.applicationId}/${token}`));
  }

  /** The interaction's original response message as it stands. */
  original(token: string): Json | undefined {
    const id = this.originals.get(token);
    return id ? this.messages.get(id) : undefined;
  }

  /** An interaction's reply as it stands: the original response, then its follow-ups (existing ones). */
  replyMessages(token: string): Json[] {
    return [this.originals.get(token), ...(this.followUps.get(token) ?? [])].map((id) => id && this.messages.get(id)).filter((m): m is Json => !!m);
  }

  /** Bot messages in a channel, oldest first. */
  botMessages(channelId: string): Json[] {
    return [...this.messages.values()].filter((m) => m.channel_id === channelId && m.author.id === this.botUser.id);
  }
}
