import { createServer, type Server } from 'node:http';
import { downloadImage, DownloadError, hostAllowed } from '../../src/adapters/shared/download';

let server: Server;
let base: string;
beforeAll(async () => {
  server = createServer((req, res) => {
    if (req.url === '/small.png') return res.end(Buffer.alloc(1000, 7));
    if (req.url === '/big-declared') {
      res.writeHead(200, { 'content-length': String(50 * 1024 * 1024) });
      return res.end();
    }
    if (req.url === '/big-chunked') {
      res.writeHead(200); // no content-length: the cap applies while streaming
      let sent = 0;
      const push = () => {
        while (sent < 3 * 1024 * 1024) {
          sent += 64 * 1024;
          if (!res.write(Buffer.alloc(64 * 1024))) return res.once('drain', push);
        }
        res.end();
      };
      return push();
    }
    if (req.url === '/slow') return setTimeout(() => res.end('late'), 2000);
    if (req.url === '/redirect-away') {
      res.writeHead(302, { location: 'http://localhost:1/evil' });
      return res.end();
    }
    if (req.url === '/auth') return res.end(req.headers.authorization ?? 'none');
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise((r) => server.close(r)));

const opts = { allowedHosts: ['127.0.0.1'], insecureHosts: ['127.0.0.1'], maxBytes: 1024 * 1024, timeoutMs: 500 };

describe('downloadImage', () => {
  it('downloads into its own ArrayBuffer and sends headers', async () => {
    const bytes = await downloadImage(`${base}/small.png`, opts);
    expect(bytes.byteLength).toBe(1000);
    expect(bytes.buffer.byteLength).toBe(1000);
    const auth = await downloadImage(`${base}/auth`, { ...opts, headers: { authorization: 'Bearer xoxb-1' } });
    expect(Buffer.from(auth).toString()).toBe('Bearer xoxb-1');
  });

  it.each([
    ['/big-declared', 'too_large', 'That image is too large (50 MB; the limit is 1 MB).'],
    ['/big-chunked', 'too_large', 'That image is too large (over 1 MB).'],
    ['/slow', 'timeout', 'The image took too long to download.'],
    ['/missing', 'http', 'I could not download that image (HTTP 404).'],
    ['/redirect-away', 'host_not_allowed', 'That image link redirects somewhere I cannot fetch from.'],
  ])('%s fails with %s', async (p, code, message) => {
    const err = await downloadImage(`${base}${p}`, opts).catch((e) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect(err.code).toBe(code);
    expect(err.message).toBe(message);
  });

  it('refuses other hosts and plain http', async () => {
    await expect(downloadImage('https://evil.example/x.png', { ...opts, allowedHosts: ['.discordapp.net', 'cdn.discordapp.com'] })).rejects.toThrow(
      'I can only fetch images from discordapp.net, cdn.discordapp.com.',
    );
    await expect(downloadImage(`${base}/small.png`, { ...opts, insecureHosts: [] })).rejects.toMatchObject({ code: 'host_not_allowed' });
    await expect(downloadImage('not a url', opts)).rejects.toMatchObject({ code: 'bad_url' });
  });

  it('matches host suffixes', () => {
    expect(hostAllowed('media.discordapp.net', ['.discordapp.net'])).toBe(true);
    expect(hostAllowed('discordapp.net', ['.discordapp.net'])).toBe(true);
    expect(hostAllowed('evildiscordapp.net', ['.discordapp.net'])).toBe(false);
  });
});
