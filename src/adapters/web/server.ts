/**
 * The local playground: a web chat on localhost that runs the same core commands as the bots.
 * A static single-page app (./public, plain HTML/CSS/JS) and one API call:
 *
 *   POST /api/run  {conversationId, clientId, input, image?: {data: base64, name}}
 *     → text/event-stream: one `data: <ReplyEvent JSON>` frame per event (queued, started,
 *       progress with the cumulative reply, done | refused | failed), then the stream ends.
 *       Closing the stream cancels the request.
 *   GET /api/info → the model's name and the limits the page enforces before uploading.
 *
 * Each browser tab is one conversation (`web:<random>`, a new image starts a new one). Bound
 * to 127.0.0.1 by default; POSTs from another origin are refused (a web page the user visits
 * must not be able to drive the local model).
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { CommandRequest, Commands, ReplyEvent } from '../../core/commands';
import { parseInput } from './parse';

export interface PlaygroundOptions {
  commands: Commands;
  host: string;
  port: number;
  modelName: string;
  maxImageBytes: number;
  maxQuizRounds: number;
  maxTextChars: number;
  logger?: Logger;
  /** Seconds between SSE keep-alive comments while a request waits (default 15). */
  heartbeatSeconds?: number;
}

export interface Playground {
  name: string;
  url: string;
  server: Server;
  stop(): Promise<void>;
}

const MB = 1024 * 1024;
const CONVERSATION = /^web:[A-Za-z0-9_-]{6,64}$/;
const CLIENT = /^[A-Za-z0-9_-]{6,64}$/;

function publicDir(): string {
  // Sources run through tsx (the default); a tsc build in dist/ reads the sources' folder.
  const here = path.join(__dirname, 'public');
  const fromDist = path.resolve(__dirname, '../../../../src/adapters/web/public');
  for (const dir of [here, fromDist]) {
    try {
      readFileSync(path.join(dir, 'index.html'));
      return dir;
    } catch {
      /* next */
    }
  }
  throw new Error(`playground files not found next to ${__dirname}`);
}

const STATIC: Record<string, [file: string, type: string]> = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code = 'bad_request',
  ) {
    super(message);
  }
}

function sizeText(n: number): string {
  return n >= MB ? `${(n / MB).toFixed(n % MB === 0 ? 0 : 1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

async function readBody(req: IncomingMessage, limit: number, imageLimit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  const tooLarge = () => new HttpError(413, `The file is too large (the limit is ${sizeText(imageLimit)}).`, 'bad_image');
  if (declared > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > limit) throw tooLarge();
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

interface RunBody {
  conversationId?: unknown;
  clientId?: unknown;
  input?: unknown;
  image?: { data?: unknown; name?: unknown } | null;
}

export async function startPlaygroundServer(o: PlaygroundOptions): Promise<Playground> {
  const dir = publicDir();
  const files = new Map<string, { body: Buffer; type: string }>();
  for (const [route, [file, type]] of Object.entries(STATIC)) files.set(route, { body: readFileSync(path.join(dir, file)), type });
  const running = new Set<{ cancel(): void }>();
  const heartbeatMs = (o.heartbeatSeconds ?? 15) * 1000;
  // base64 is 4/3 of the bytes; the rest of the JSON is small.
  const bodyLimit = Math.ceil((o.maxImageBytes * 4) / 3) + 64 * 1024;

  const json = (res: ServerResponse, status: number, value: unknown) => {
    const body = JSON.stringify(value);
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };

  function checkOrigin(req: IncomingMessage): void {
    const origin = req.headers.origin;
    if (!origin) return;
    let host: string;
    try {
      host = new URL(origin).host;
    } catch {
      throw new HttpError(403, 'Bad origin.', 'forbidden');
    }
    if (host !== req.headers.host) throw new HttpError(403, 'Requests from other sites are not accepted.', 'forbidden');
  }

  function toRequest(body: RunBody): CommandRequest {
    const conversationId = typeof body.conversationId === 'string' && CONVERSATION.test(body.conversationId) ? body.conversationId : undefined;
    if (!conversationId) throw new HttpError(400, 'Missing or malformed conversationId (web:<6-64 letters, digits, _ or ->).');
    const clientId = typeof body.clientId === 'string' && CLIENT.test(body.clientId) ? body.clientId : 'anonymous';
    const input = typeof body.input === 'string' ? body.input : '';
    const parsed = parseInput(input, o.maxQuizRounds);
    if (!parsed.ok) throw new HttpError(400, parsed.message);
    let image: CommandRequest['image'];
    if (body.image && typeof body.image.data === 'string') {
      const bytes = Buffer.from(body.image.data, 'base64');
      if (bytes.length > o.maxImageBytes) {
        throw new HttpError(413, `The file is too large (${sizeText(bytes.length)}; the limit is ${sizeText(o.maxImageBytes)}).`, 'bad_image');
      }
      const name = typeof body.image.name === 'string' ? body.image.name.slice(0, 200) : 'upload';
      image = { bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), name };
    }
    const needsImage = parsed.command === 'describe' || parsed.command === 'ask' || parsed.command === 'quiz';
    if (needsImage && !image) throw new HttpError(400, 'Drop, paste or choose an image first.');
    // A message about a freshly dropped image (no reply yet) is a question about it.
    const command = parsed.command === 'followup' && image ? 'ask' : parsed.command;
    if (command === 'followup' || command === 'more') image = undefined;
    return {
      command,
      who: { userId: `web:${clientId}`, channelIds: ['web'] },
      conversationId,
      ...(image ? { image } : {}),
      ...(parsed.text !== undefined ? { text: parsed.text } : {}),
      ...(parsed.detail ? { detail: parsed.detail } : {}),
      ...(parsed.rounds ? { rounds: parsed.rounds } : {}),
    };
  }

  async function run(req: IncomingMessage, res: ServerResponse): Promise<void> {
    checkOrigin(req);
    if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) throw new HttpError(415, 'Send JSON.');
    const raw = await readBody(req, bodyLimit, o.maxImageBytes);
    let body: RunBody;
    try {
      body = JSON.parse(raw.toString('utf8')) as RunBody;
    } catch {
      throw new HttpError(400, 'The request is not valid JSON.');
    }
    const request = toRequest(body);

    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.socket?.setNoDelay(true);
    res.write(': stream open\n\n');
    const send = (ev: ReplyEvent) => {
      if (!res.writableEnded) res.write(`data: ${JSON.stringify(ev)}\n\n`);
    };
    const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), heartbeatMs);
    const handle = o.commands.run(request, send);
    running.add(handle);
    res.on('close', () => {
      if (!res.writableEnded) handle.cancel(); // the tab closed or the user stopped it
    });
    try {
      await handle.done;
    } finally {
      clearInterval(heartbeat);
      running.delete(handle);
      res.end();
    }
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = async () => {
      if (req.method === 'GET' || req.method === 'HEAD') {
        const file = files.get(url.pathname);
        if (file) {
          res.writeHead(200, {
            'content-type': file.type,
            'content-length': file.body.length,
            'cache-control': 'no-cache',
            'x-content-type-options': 'nosniff',
            'content-security-policy': "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'",
          });
          return void res.end(req.method === 'HEAD' ? undefined : file.body);
        }
        if (url.pathname === '/api/info') {
          return json(res, 200, { model: o.modelName, maxImageBytes: o.maxImageBytes, maxQuizRounds: o.maxQuizRounds, maxTextChars: o.maxTextChars });
        }
        if (url.pathname === '/favicon.ico') return void res.writeHead(204).end();
        return json(res, 404, { error: { code: 'not_found', message: 'Not found.' } });
      }
      if (req.method === 'POST' && url.pathname === '/api/run') return run(req, res);
      return json(res, 405, { error: { code: 'method_not_allowed', message: 'Method not allowed.' } });
    };
    route().catch((err: unknown) => {
      const e = err instanceof HttpError ? err : new HttpError(500, 'Something went wrong on my side. Please try again.', 'internal');
      if (!(err instanceof HttpError)) o.logger?.error({ err: (err as Error).message, path: url.pathname }, 'playground request failed');
      if (res.headersSent) return void res.end();
      // Drain what the browser is still sending (a too-large upload) so it reads our answer.
      req.resume();
      json(res, e.status, { error: { code: e.code, message: e.message } });
    });
  });
  server.requestTimeout = 0; // streams may outlive node's default 5-minute request timeout
  // once() rejects if 'error' (e.g. EADDRINUSE) comes first.
  await once(server.listen(o.port, o.host), 'listening');
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address === '0.0.0.0' ? '127.0.0.1' : addr.address;
  return {
    name: 'playground',
    url: `http://${host}:${addr.port}/`,
    server,
    async stop() {
      for (const r of running) r.cancel();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 2000).unref();
      });
    },
  };
}
