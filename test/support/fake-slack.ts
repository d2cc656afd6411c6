/**
 * A fake Slack on loopback for testing the real Bolt app: a Web API (`slackApiUrl`) that
 * records calls and keeps channel histories and files, a file host serving `url_private`
 * downloads (bot token required), response_url endpoints, and helpers that sign requests to
 * the bot's HTTP receiver exactly as Slack does (v0 HMAC-SHA256 over "v0:{ts}:{body}").
 */
import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

export const TEAM = 'T0CURIO';
export const BOT_USER = 'UCURIOBOT';
export const BOT_ID = 'BCURIO';
export const BOT_TOKEN = 'xoxb-fake-curio-token';
export const SIGNING_SECRET = 'fake-signing-secret-0123456789';
export const APP_TOKEN = 'xapp-1-fake-curio-app-token';

export interface ApiCall {
  method: string;
  args: Record<string, any>;
  token?: string;
  at: number;
}

export interface FakeFile {
  id: string;
  name: string;
  title: string;
  mimetype: string;
  filetype: string;
  pretty_type: string;
  size: number;
  url_private: string;
  url_private_download: string;
  mode: string;
}

export interface FakeMessage {
  type: 'message';
  ts: string;
  thread_ts?: string;
  user?: string;
  bot_id?: string;
  text?: string;
  blocks?: unknown[];
  files?: Array<Partial<FakeFile>>;
  reply_count?: number;
}

export class FakeSlack {
  readonly calls: ApiCall[] = [];
  readonly responses: Array<{ path: string; body: any; at: number }> = [];
  readonly downloads: Array<{ path: string; authorization?: string; status: number }> = [];
  /** Channels whose history the bot may not read (`not_in_channel`). */
  readonly notInChannel = new Set<string>();
  /** Web API methods that fail with this error code. */
  readonly failures = new Map<string, string>();
  private readonly messages = new Map<string, FakeMessage[]>();
  private readonly files = new Map<string, { file: FakeFile; bytes: Uint8Array }>();
  private clock = 1_700_000_000;
  private wss?: WebSocketServer;
  private socket?: WebSocket;
  private readonly acks = new Map<string, (payload: unknown) => void>();
  private seq = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(): Promise<FakeSlack> {
    let fake: FakeSlack | undefined;
    const server = createServer((req, res) => {
      fake!.handle(req, res).catch((err) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    fake = new FakeSlack(server, (server.address() as AddressInfo).port);
    return fake;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get apiUrl(): string {
    return `${this.url}/api/`;
  }

  /** Socket Mode: `apps.connections.open` hands out ws://…/socket, served here. */
  enableSocketMode(): void {
    this.wss = new WebSocketServer({ noServer: true });
    this.server.on('upgrade', (req, sock, head) => {
      if (!req.url?.startsWith('/socket')) return sock.destroy();
      this.wss!.handleUpgrade(req, sock, head, (ws) => {
        this.socket = ws;
        ws.on('message', (data) => {
          const msg = JSON.parse(String(data)) as { envelope_id?: string; payload?: unknown };
          if (msg.envelope_id) this.acks.get(msg.envelope_id)?.(msg.payload ?? {});
        });
        ws.send(JSON.stringify({ type: 'hello', num_connections: 1, connection_info: { app_id: 'ACURIO' }, debug_info: { host: 'fake' } }));
      });
    });
  }

  get socketConnected(): boolean {
    return this.socket?.readyState === 1;
  }

  /** Sends an envelope over the Socket Mode connection; resolves with the app's ack payload. */
  sendEnvelope(type: 'events_api' | 'slash_commands' | 'interactive', payload: unknown, timeoutMs = 3000): Promise<unknown> {
    const id = `env-${++this.seq}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ack for ${type} envelope within ${timeoutMs} ms`)), timeoutMs);
      this.acks.set(id, (p) => {
        clearTimeout(timer);
        resolve(p);
      });
      this.socket!.send(JSON.stringify({ envelope_id: id, type, payload, accepts_response_payload: type !== 'events_api', retry_attempt: 0, retry_reason: '' }));
    });
  }

  async close(): Promise<void> {
    for (const c of this.wss?.clients ?? []) c.terminate();
    this.wss?.close();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  nextTs(): string {
    this.seq++;
    return `${this.clock + this.seq}.${String(this.seq).padStart(6, '0')}`;
  }

  newResponseUrl(): string {
    return `${this.url}/respond/${++this.seq}`;
  }

  /** Stores a file; its `url_private*` point at this fake. */
  addFile(name: string, mimetype: string, bytes: Uint8Array): FakeFile {
    const id = `F${String(++this.seq).padStart(8, '0')}`;
    const url = `${this.url}/files-pri/${TEAM}-${id}/${encodeURIComponent(name)}`;
    const file: FakeFile = {
      id,
      name,
      title: name,
      mimetype,
      filetype: name.split('.').pop() ?? '',
      pretty_type: mimetype.startsWith('image/') ? mimetype.slice(6).toUpperCase() : mimetype === 'application/pdf' ? 'PDF' : mimetype,
      size: bytes.byteLength,
      url_private: url,
      url_private_download: `${url}?download=1`,
      mode: 'hosted',
    };
    this.files.set(id, { file, bytes });
    return file;
  }

  /** A person's message in the channel's history (and thread); returns it for event payloads. */
  addMessage(channel: string, m: { user: string; text?: string; files?: FakeFile[]; thread_ts?: string }): FakeMessage {
    const msg: FakeMessage = { type: 'message', ts: this.nextTs(), user: m.user, text: m.text ?? '', ...(m.thread_ts ? { thread_ts: m.thread_ts } : {}) };
    if (m.files) msg.files = m.files;
    this.list(channel).push(msg);
    return msg;
  }

  private list(channel: string): FakeMessage[] {
    let l = this.messages.get(channel);
    if (!l) this.messages.set(channel, (l = []));
    return l;
  }

  api(method: string): ApiCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  /** The current content of a message the bot posted (after its updates). */
  message(channel: string, ts: string): FakeMessage | undefined {
    return this.list(channel).find((m) => m.ts === ts);
  }

  /** Every message the bot posted in a channel, in order. */
  botMessages(channel: string): FakeMessage[] {
    return this.list(channel).filter((m) => m.bot_id === BOT_ID);
  }

  /** Messages the bot posted in a thread, in order. */
  botReplies(channel: string, threadTs: string): FakeMessage[] {
    return this.list(channel).filter((m) => m.bot_id === BOT_ID && (m.thread_ts === threadTs || m.ts === threadTs));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.url);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');

    if (url.pathname.startsWith('/files-pri/')) {
      const auth = req.headers.authorization;
      const id = url.pathname.split('/')[2]?.split('-')[1];
      const entry = id ? this.files.get(id) : undefined;
      const status = auth !== `Bearer ${BOT_TOKEN}` ? 403 : entry ? 200 : 404;
      this.downloads.push({ path: url.pathname, authorization: auth, status });
      res.statusCode = status;
      if (status !== 200) return void res.end('no');
      res.setHeader('content-type', entry!.file.mimetype);
      res.setHeader('content-length', String(entry!.bytes.byteLength));
      return void res.end(Buffer.from(entry!.bytes));
    }

    if (url.pathname.startsWith('/respond/')) {
      this.responses.push({ path: url.pathname, body: JSON.parse(raw || '{}'), at: Date.now() });
      res.setHeader('content-type', 'application/json');
      return void res.end('{"ok":true}');
    }

    if (!url.pathname.startsWith('/api/')) {
      res.statusCode = 404;
      return void res.end();
    }
    const method = url.pathname.slice('/api/'.length);
    const args = parseArgs(raw, req.headers['content-type'] ?? '');
    const token = req.headers.authorization?.replace(/^Bearer /, '');
    this.calls.push({ method, args, token, at: Date.now() });
    const reply = (body: object) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(body));
    };
    if (method === 'apps.connections.open') {
      return token === APP_TOKEN ? reply({ ok: true, url: `ws://127.0.0.1:${this.port}/socket` }) : reply({ ok: false, error: 'invalid_auth' });
    }
    if (token !== BOT_TOKEN) return reply({ ok: false, error: 'invalid_auth' });
    const failure = this.failures.get(method);
    if (failure) return reply({ ok: false, error: failure });
    reply(this.dispatch(method, args));
  }

  private dispatch(method: string, a: Record<string, any>): object {
    switch (method) {
      case 'auth.test':
        return { ok: true, url: 'https://curio-test.slack.com/', team: 'Curio Test', user: 'curio', team_id: TEAM, user_id: BOT_USER, bot_id: BOT_ID };
      case 'chat.postMessage': {
        const msg: FakeMessage = { type: 'message', ts: this.nextTs(), bot_id: BOT_ID, user: BOT_USER, text: a.text, blocks: a.blocks };
        if (a.thread_ts) msg.thread_ts = a.thread_ts;
        this.list(a.channel).push(msg);
        return { ok: true, channel: a.channel, ts: msg.ts, message: msg };
      }
      case 'chat.update': {
        const msg = this.message(a.channel, a.ts);
        if (!msg) return { ok: false, error: 'message_not_found' };
        msg.text = a.text;
        msg.blocks = a.blocks;
        return { ok: true, channel: a.channel, ts: a.ts, text: a.text };
      }
      case 'chat.delete': {
        const l = this.list(a.channel);
        const i = l.findIndex((m) => m.ts === a.ts);
        if (i < 0) return { ok: false, error: 'message_not_found' };
        l.splice(i, 1);
        return { ok: true, channel: a.channel, ts: a.ts };
      }
      case 'chat.postEphemeral':
        return { ok: true, message_ts: this.nextTs() };
      case 'files.info': {
        const f = this.files.get(a.file);
        return f ? { ok: true, file: f.file } : { ok: false, error: 'file_not_found' };
      }
      case 'conversations.history': {
        if (this.notInChannel.has(a.channel)) return { ok: false, error: 'not_in_channel' };
        const top = this.list(a.channel).filter((m) => !m.thread_ts || m.thread_ts === m.ts);
        return { ok: true, messages: top.slice().reverse().slice(0, Number(a.limit ?? 100)), has_more: false };
      }
      case 'conversations.replies': {
        if (this.notInChannel.has(a.channel)) return { ok: false, error: 'not_in_channel' };
        const thread = this.list(a.channel).filter((m) => m.ts === a.ts || m.thread_ts === a.ts);
        return { ok: true, messages: thread.slice(0, Number(a.limit ?? 100)), has_more: false };
      }
      default:
        return { ok: false, error: 'unknown_method' };
    }
  }
}

function parseArgs(raw: string, contentType: string): Record<string, any> {
  if (!raw) return {};
  if (contentType.includes('application/json')) return JSON.parse(raw);
  const out: Record<string, any> = {};
  for (const [k, v] of new URLSearchParams(raw)) {
    out[k] = /^[[{]/.test(v) ? safeJson(v) : v;
  }
  return out;
}

function safeJson(v: string): unknown {
  try {
    return JSON.parse(v);
  } catch {
    return v;
  }
}

// --- Requests to the bot, signed as Slack signs them -----------------------------------------

export function sign(secret: string, timestamp: number, body: string): string {
  return 'v0=' + createHmac('sha256', secret).update(`v0:${timestamp}:${body}`).digest('hex');
}

export interface SendOptions {
  secret?: string;
  /** Seconds since the epoch; default now. */
  timestamp?: number;
  retryNum?: number;
  signature?: string;
}

export interface BotResponse {
  status: number;
  body: string;
  ms: number;
}

export async function sendSigned(botUrl: string, body: string, contentType: string, o: SendOptions = {}): Promise<BotResponse> {
  const ts = o.timestamp ?? Math.floor(Date.now() / 1000);
  const headers: Record<string, string> = {
    'content-type': contentType,
    'x-slack-request-timestamp': String(ts),
    'x-slack-signature': o.signature ?? sign(o.secret ?? SIGNING_SECRET, ts, body),
  };
  if (o.retryNum !== undefined) {
    headers['x-slack-retry-num'] = String(o.retryNum);
    headers['x-slack-retry-reason'] = 'http_timeout';
  }
  const t0 = performance.now();
  const res = await fetch(botUrl, { method: 'POST', headers, body });
  const text = await res.text();
  return { status: res.status, body: text, ms: performance.now() - t0 };
}

export function slashCommandPayload(o: { command: string; text?: string; user: string; channel: string; responseUrl: string }): Record<string, string> {
  return {
    token: 'legacy-verification-token',
    team_id: TEAM,
    team_domain: 'curio-test',
    channel_id: o.channel,
    channel_name: 'general',
    user_id: o.user,
    user_name: o.user.toLowerCase(),
    command: o.command,
    text: o.text ?? '',
    api_app_id: 'ACURIO',
    response_url: o.responseUrl,
    trigger_id: '123.456.abc',
  };
}

export function slashCommandBody(o: { command: string; text?: string; user: string; channel: string; responseUrl: string }): string {
  return new URLSearchParams(slashCommandPayload(o)).toString();
}

let eventSeq = 0;

export function eventBody(event: Record<string, unknown>, eventId = `Ev${String(++eventSeq).padStart(8, '0')}`): { body: string; eventId: string } {
  const body = JSON.stringify({
    token: 'legacy-verification-token',
    team_id: TEAM,
    api_app_id: 'ACURIO',
    event: { event_ts: event.ts, ...event },
    type: 'event_callback',
    event_id: eventId,
    event_time: Math.floor(Date.now() / 1000),
    authorizations: [{ team_id: TEAM, user_id: BOT_USER, is_bot: true, is_enterprise_install: false }],
    is_ext_shared_channel: false,
  });
  return { body, eventId };
}

export function interactiveBody(payload: Record<string, unknown>): string {
  return new URLSearchParams({ payload: JSON.stringify(payload) }).toString();
}

export function messageShortcutPayload(o: { callbackId: string; user: string; channel: string; message: FakeMessage; responseUrl: string }) {
  return {
    type: 'message_action',
    callback_id: o.callbackId,
    trigger_id: '123.456.def',
    message_ts: o.message.ts,
    response_url: o.responseUrl,
    message: { ...o.message, files: o.message.files?.map((f) => ({ id: f.id })) },
    user: { id: o.user, name: o.user.toLowerCase(), team_id: TEAM },
    channel: { id: o.channel, name: 'general' },
    team: { id: TEAM, domain: 'curio-test' },
    token: 'legacy-verification-token',
    action_ts: '1700000000.1',
  };
}

export function blockActionPayload(o: { user: string; channel: string; message: FakeMessage; actionId: string; value: string; responseUrl: string }) {
  return {
    type: 'block_actions',
    user: { id: o.user, username: o.user.toLowerCase(), name: o.user.toLowerCase(), team_id: TEAM },
    api_app_id: 'ACURIO',
    token: 'legacy-verification-token',
    container: { type: 'message', message_ts: o.message.ts, channel_id: o.channel, is_ephemeral: false, thread_ts: o.message.thread_ts },
    trigger_id: '123.456.ghi',
    team: { id: TEAM, domain: 'curio-test' },
    channel: { id: o.channel, name: 'general' },
    message: o.message,
    response_url: o.responseUrl,
    actions: [{ action_id: o.actionId, block_id: 'b1', type: 'button', value: o.value, action_ts: '1700000000.2', text: { type: 'plain_text', text: 'x' } }],
  };
}

/** Polls until `check` returns a truthy value. */
export async function waitFor<T>(check: () => T | undefined | false | null, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
