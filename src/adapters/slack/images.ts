/**
 * Finding and fetching the image a Slack request is about: a file on the message (events,
 * shortcuts: `files.info` fills in what the payload leaves out), the user's most recent image
 * in a channel or thread (slash commands carry no files: `conversations.history` /
 * `conversations.replies`), or an image link in the command text. Downloads go only to the
 * allowed hosts, size-capped and timed; the bot token is sent to Slack's file hosts only.
 */
import type { WebClient } from '@slack/web-api';
import { DownloadError, downloadImage, hostAllowed } from '../shared/download';

export interface SlackFile {
  id: string;
  name?: string;
  title?: string;
  mimetype?: string;
  filetype?: string;
  pretty_type?: string;
  size?: number;
  url_private?: string;
  url_private_download?: string;
  /** "check_file_info": the event left the details out (Slack Connect, large events). */
  file_access?: string;
  mode?: string;
}

export interface SlackMessageLike {
  ts?: string;
  thread_ts?: string;
  user?: string;
  bot_id?: string;
  subtype?: string;
  files?: SlackFile[];
}

/** A problem with the user's input, shown to them as is. */
export class ImageLookupError extends Error {
  constructor(
    readonly code: 'no_image' | 'not_image' | 'not_in_channel' | 'lookup_failed' | 'download',
    message: string,
  ) {
    super(message);
    this.name = 'ImageLookupError';
  }
}

export interface FetchPolicy {
  /** Hosts of Slack's file servers: receive the bot token (files.slack.com). */
  fileHosts: string[];
  /** Hosts an image link in a command may point at (no token sent unless also a file host). */
  linkHosts: string[];
  /** http:// allowed to these (loopback fakes in tests). */
  insecureHosts?: string[];
  maxBytes: number;
  timeoutMs: number;
  botToken: string;
}

export function isImage(file: SlackFile): boolean {
  return typeof file.mimetype === 'string' && file.mimetype.toLowerCase().startsWith('image/');
}

function describeKind(file: SlackFile): string {
  return file.pretty_type || file.mimetype || file.filetype || 'unknown type';
}

/** The first image among a message's files; a clear error when there are files but none is an image. */
export function pickImage(files: SlackFile[] | undefined): SlackFile | undefined {
  if (!files || files.length === 0) return undefined;
  const image = files.find((f) => isImage(f) && f.mode !== 'tombstone');
  if (image) return image;
  const f = files[0];
  throw new ImageLookupError('not_image', `${f.name ? `“${f.name}”` : 'That file'} is not an image (${describeKind(f)}). I can read PNG, JPEG, GIF and WebP images.`);
}

function apiError(err: unknown): string {
  return (err as { data?: { error?: string } }).data?.error ?? (err as Error).message;
}

function lookupFailure(err: unknown): ImageLookupError {
  const code = apiError(err);
  if (code === 'not_in_channel' || code === 'channel_not_found') {
    return new ImageLookupError('not_in_channel', 'I can’t see the messages in this channel. Add me first (`/invite @Curio`), then try again.');
  }
  return new ImageLookupError('lookup_failed', 'I couldn’t look through this conversation for an image. Please try again.');
}

/** Fills in a file's download URL and type with `files.info` when the payload left them out. */
export async function completeFile(client: WebClient, file: SlackFile): Promise<SlackFile> {
  if ((file.url_private_download || file.url_private) && file.mimetype && file.file_access !== 'check_file_info') return file;
  try {
    const res = await client.files.info({ file: file.id });
    return { ...file, ...(res.file as SlackFile) };
  } catch (err) {
    const code = apiError(err);
    if (code === 'file_not_found' || code === 'file_deleted') throw new ImageLookupError('no_image', 'That image has been deleted.');
    throw new ImageLookupError('lookup_failed', 'I couldn’t get that file from Slack. Please try again.');
  }
}

/** The image of a message: from its files, completed with `files.info`. */
export async function imageOfMessage(client: WebClient, files: SlackFile[] | undefined): Promise<SlackFile | undefined> {
  if (!files || files.length === 0) return undefined;
  // Files whose type the payload omits are looked up before deciding.
  const completed = await Promise.all(files.slice(0, 10).map((f) => (f.mimetype ? f : completeFile(client, f))));
  const image = pickImage(completed);
  return image && completeFile(client, image);
}

export interface FoundImage {
  file: SlackFile;
  /** The message holding the image. */
  ts: string;
  /** Thread the image belongs to (its own ts when it is a top-level message). */
  threadTs: string;
}

const LOOKBACK = 100;

/**
 * The most recent image in a thread (anyone's) or, outside threads, the user's most recent
 * image in the channel (falling back to anyone's).
 */
export async function findRecentImage(client: WebClient, where: { channel: string; threadTs?: string; userId: string }): Promise<FoundImage | undefined> {
  let messages: SlackMessageLike[];
  try {
    if (where.threadTs) {
      const res = await client.conversations.replies({ channel: where.channel, ts: where.threadTs, limit: LOOKBACK });
      messages = ((res.messages ?? []) as SlackMessageLike[]).slice().reverse(); // newest first
    } else {
      const res = await client.conversations.history({ channel: where.channel, limit: LOOKBACK });
      messages = (res.messages ?? []) as SlackMessageLike[]; // newest first
    }
  } catch (err) {
    throw lookupFailure(err);
  }
  const withImage = messages.filter((m) => m.ts && (m.files ?? []).some((f) => isImage(f) && f.mode !== 'tombstone'));
  const mine = withImage.find((m) => m.user === where.userId);
  const m = mine ?? (where.threadTs ? withImage[0] : undefined);
  if (!m) return undefined;
  const file = await completeFile(client, m.files!.find((f) => isImage(f) && f.mode !== 'tombstone')!);
  return { file, ts: m.ts!, threadTs: where.threadTs ?? m.thread_ts ?? m.ts! };
}

/** An image link in command text: Slack sends `<https://…>` or `<https://…|label>`; bare URLs too. */
export function extractLink(text: string): { url?: string; rest: string } {
  const angle = /<(https?:\/\/[^>|\s]+)(?:\|[^>]*)?>/i.exec(text);
  const bare = angle ? undefined : /(?:^|\s)(https?:\/\/\S+)/i.exec(text);
  const m = angle ?? bare;
  if (!m) return { rest: text.trim() };
  const url = m[1].replace(/&amp;/g, '&');
  const rest = (text.slice(0, m.index) + ' ' + text.slice(m.index + m[0].length)).replace(/\s+/g, ' ').trim();
  return { url, rest };
}

export function isSlackFileUrl(url: string, policy: FetchPolicy): boolean {
  try {
    return hostAllowed(new URL(url).hostname, policy.fileHosts);
  } catch {
    return false;
  }
}

/** Downloads a Slack file (with the bot token) under the size cap. */
export async function downloadFile(file: SlackFile, policy: FetchPolicy): Promise<Uint8Array> {
  const url = file.url_private_download ?? file.url_private;
  if (!url) throw new ImageLookupError('download', 'Slack did not give me a link to that file.');
  if (!isSlackFileUrl(url, policy)) throw new ImageLookupError('download', 'That file is not stored on Slack, so I cannot fetch it.');
  if (file.size !== undefined && file.size > policy.maxBytes) {
    throw new ImageLookupError('download', `That image is too large (${mb(file.size)}; the limit is ${mb(policy.maxBytes)}).`);
  }
  return download(url, policy, policy.fileHosts);
}

/** Downloads an image link from a command; only allowed hosts, token only to Slack's. */
export async function downloadLink(url: string, policy: FetchPolicy): Promise<Uint8Array> {
  // A Slack file link keeps to Slack's hosts (it carries the token); other links to linkHosts.
  return download(url, policy, isSlackFileUrl(url, policy) ? policy.fileHosts : policy.linkHosts);
}

async function download(url: string, policy: FetchPolicy, allowedHosts: string[]): Promise<Uint8Array> {
  try {
    return await downloadImage(url, {
      allowedHosts,
      maxBytes: policy.maxBytes,
      timeoutMs: policy.timeoutMs,
      insecureHosts: policy.insecureHosts,
      // The token goes to Slack's own file hosts only (redirects are checked hop by hop).
      headers: isSlackFileUrl(url, policy) ? { Authorization: `Bearer ${policy.botToken}` } : undefined,
    });
  } catch (err) {
    if (err instanceof DownloadError) throw new ImageLookupError('download', err.message);
    throw err;
  }
}

const mb = (n: number) => `${Math.round((n / (1024 * 1024)) * 10) / 10} MB`;
