/**
 * Downloads a user's image from a platform's file host: only from allowed hosts, over HTTPS
 * (or loopback http in tests), with a byte cap enforced while streaming and a timeout. Fails
 * with a short user-facing message.
 */

export class DownloadError extends Error {
  constructor(
    readonly code: 'host_not_allowed' | 'too_large' | 'timeout' | 'http' | 'network' | 'bad_url',
    message: string,
  ) {
    super(message);
    this.name = 'DownloadError';
  }
}

export interface DownloadOptions {
  /** Exact host names, or suffixes starting with a dot (".discordapp.com"). */
  allowedHosts: string[];
  maxBytes: number;
  timeoutMs: number;
  headers?: Record<string, string>;
  /** Allows http:// to these hosts (loopback fakes in tests). */
  insecureHosts?: string[];
}

export function hostAllowed(host: string, allowed: readonly string[]): boolean {
  const h = host.toLowerCase();
  return allowed.some((a) => (a.startsWith('.') ? h.endsWith(a) || h === a.slice(1) : h === a.toLowerCase()));
}

function urlAllowed(u: URL, o: DownloadOptions): boolean {
  const insecureOk = u.protocol === 'http:' && (o.insecureHosts ?? []).includes(u.hostname);
  return (u.protocol === 'https:' || insecureOk) && hostAllowed(u.hostname, o.allowedHosts);
}

/** Follows redirects by hand so every hop is checked: credentials never leave the allowed hosts. */
async function fetchFollowingAllowed(first: URL, o: DownloadOptions, signal: AbortSignal): Promise<Response> {
  let url = first;
  for (let hop = 0; hop < 5; hop++) {
    let res: Response;
    try {
      res = await fetch(url, { headers: o.headers, signal, redirect: 'manual' });
    } catch {
      if (signal.aborted) throw new DownloadError('timeout', 'The image took too long to download.');
      throw new DownloadError('network', 'I could not download that image.');
    }
    const location = res.headers.get('location');
    if (res.status < 300 || res.status >= 400 || !location) return res;
    await res.body?.cancel();
    url = new URL(location, url);
    if (!urlAllowed(url, o)) throw new DownloadError('host_not_allowed', 'That image link redirects somewhere I cannot fetch from.');
  }
  throw new DownloadError('http', 'That image link redirects too many times.');
}

const mb = (n: number) => `${Math.round((n / (1024 * 1024)) * 10) / 10} MB`;

export async function downloadImage(url: string, o: DownloadOptions): Promise<Uint8Array> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DownloadError('bad_url', 'That is not a valid link.');
  }
  if (!urlAllowed(u, o)) {
    throw new DownloadError('host_not_allowed', `I can only fetch images from ${o.allowedHosts.map((h) => h.replace(/^\./, '')).join(', ')}.`);
  }
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), o.timeoutMs);
  try {
    const res = await fetchFollowingAllowed(u, o, ctrl.signal);
    if (!res.ok) throw new DownloadError('http', `I could not download that image (HTTP ${res.status}).`);
    const declared = Number(res.headers.get('content-length') ?? NaN);
    if (declared > o.maxBytes) {
      await res.body?.cancel();
      throw new DownloadError('too_large', `That image is too large (${mb(declared)}; the limit is ${mb(o.maxBytes)}).`);
    }
    const chunks: Uint8Array[] = [];
    let total = 0;
    if (res.body) {
      const reader = res.body.getReader();
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch {
          if (ctrl.signal.aborted) throw new DownloadError('timeout', 'The image took too long to download.');
          throw new DownloadError('network', 'The image download was interrupted.');
        }
        if (chunk.done) break;
        total += chunk.value.byteLength;
        if (total > o.maxBytes) {
          await reader.cancel();
          throw new DownloadError('too_large', `That image is too large (over ${mb(o.maxBytes)}).`);
        }
        chunks.push(chunk.value);
      }
    }
    // One ArrayBuffer of its own, so it can be transferred to a worker without copying.
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.byteLength;
    }
    return out;
  } finally {
    clearTimeout(timer);
  }
}
