/**
 * Splits a long answer into messages that each fit a platform's limit (Discord 2000
 * characters, Slack blocks 3000), preferring paragraph, then line, then sentence, then word
 * boundaries. A code block cut in two is closed at the end of one part and reopened (with its
 * language) at the start of the next, so each part renders on its own. Never splits a
 * surrogate pair or a grapheme made of combining marks.
 */

export interface SplitOptions {
  /** Maximum length of one part, in UTF-16 code units (what Discord and Slack count). */
  limit: number;
}

const FENCE = /^(\s*)(`{3,}|~{3,})(.*)$/;

/** Cut points, best first: the highest-ranked boundary found in the window wins. */
const BOUNDARIES: RegExp[] = [
  /\n\s*\n/g, // paragraph
  /\n/g, // line
  /[.!?。！？](?=\s)/g, // sentence end (cut after the punctuation)
  /\s/g, // word
];

export function splitReply(text: string, { limit }: SplitOptions): string[] {
  if (limit < 32) throw new RangeError(`split limit ${limit} is too small`);
  const parts: string[] = [];
  let rest = text.trim();
  let reopen = ''; // fence line to reopen at the start of the next part

  while (rest.length > 0) {
    const prefix = reopen ? reopen + '\n' : '';
    // Room for a closing fence if this part ends inside a code block.
    const budget = limit - prefix.length - 4;
    if (prefix.length + rest.length <= limit) {
      parts.push(prefix + rest);
      break;
    }
    const cut = findCut(rest, budget);
    let head = rest.slice(0, cut).replace(/\s+$/, '');
    rest = rest.slice(cut).replace(/^\s+/, '');

    const open = openFenceAtEnd(reopen, head);
    if (open) {
      const closer = open.marker;
      head = head + '\n' + closer;
      reopen = open.line;
    } else {
      reopen = '';
    }
    parts.push(prefix + head);
  }
  return parts.filter((p) => p.trim().length > 0);
}

function findCut(text: string, budget: number): number {
  const window = text.slice(0, budget + 1);
  for (const re of BOUNDARIES) {
    let best = -1;
    re.lastIndex = 0;
    for (let m = re.exec(window); m; m = re.exec(window)) {
      const end = re === BOUNDARIES[2] ? m.index + m[0].length : m.index;
      if (end > 0 && end <= budget) best = end;
    }
    // Accept a boundary only if it keeps the part reasonably full (no tiny parts).
    if (best >= budget * 0.3) return best;
  }
  return safeIndex(text, budget);
}

const graphemes = new Intl.Segmenter(undefined, { granularity: 'grapheme' });

/** The last grapheme boundary at or before `index`: a hard cut never splits a character,
 * a surrogate pair, an emoji with its modifiers or a letter from its combining marks. */
function safeIndex(text: string, index: number): number {
  let last = 0;
  for (const { index: at } of graphemes.segment(text.slice(0, index + 16))) {
    if (at > index) break;
    last = at;
  }
  return last > 0 ? last : index;
}

interface OpenFence {
  line: string; // the opening line, e.g. "```ts"
  marker: string; // the fence characters, e.g. "```"
}

/** The code block left open at the end of `body`, given the block open at its start. */
function openFenceAtEnd(reopened: string, body: string): OpenFence | null {
  let open: OpenFence | null = reopened ? { line: reopened, marker: reopened.trim().match(/^(`{3,}|~{3,})/)![1] } : null;
  for (const line of body.split('\n')) {
    const m = FENCE.exec(line);
    if (!m) continue;
    const marker = m[2];
    if (open === null) open = { line: line.trim(), marker };
    else if (marker.startsWith(open.marker[0]) && marker.length >= open.marker.length && m[3].trim() === '') open = null;
  }
  return open;
}
