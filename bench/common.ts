/**
 * Shared bits of the benchmarks (bench/engine.ts, bench/serve.ts): argument parsing, statistics,
 * test images rendered with sharp, the machine description, table printing.
 *
 * These are measurements to read, not tests: nothing here asserts a time.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';

export const ROOT = path.resolve(__dirname, '..');
export const DEFAULT_BUNDLE = path.join(ROOT, 'models', 'sq-llava-micro');
export const GOLDEN_BUNDLE = path.join(ROOT, 'test', 'fixtures', 'golden', 'bundle');

/** `--name value` / `--flag` arguments. */
export function parseArgs(argv: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) out[a.slice(2)] = argv[++i];
    else out[a.slice(2)] = true;
  }
  return out;
}

/** The bundle to measure: `--bundle`, else models/sq-llava-micro, else the golden test bundle. */
export function pickBundle(arg: string | true | undefined): { dir: string; note: string } {
  if (typeof arg === 'string') return { dir: path.resolve(arg), note: '' };
  if (existsSync(path.join(DEFAULT_BUNDLE, 'model.json'))) return { dir: DEFAULT_BUNDLE, note: '' };
  return {
    dir: GOLDEN_BUNDLE,
    note: 'models/sq-llava-micro is missing: measuring the golden test bundle (random weights, tiny dimensions)',
  };
}

export function quantile(xs: readonly number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

export const median = (xs: readonly number[]) => quantile(xs, 0.5);

export function peakRssMB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

export function machine(): { cpu: string; cores: number; memGiB: number; node: string; os: string } {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1].trim();
  } catch {
    /* not Linux */
  }
  return { cpu, cores: os.cpus().length, memGiB: os.totalmem() / 2 ** 30, node: process.version, os: `${os.type()} ${os.release()}` };
}

const SHAPES = ['circle', 'square', 'triangle'] as const;
const COLOURS = ['#d62728', '#1f77b4', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

/**
 * A distinct PNG per index: a few coloured shapes on a tinted background, rendered by sharp
 * from SVG (so every request is a different image and no result or embedding cache hides work).
 */
export async function renderScene(index: number, size = 224): Promise<Buffer> {
  let x = (index * 2654435761) >>> 0;
  const rnd = () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return x / 2 ** 32;
  };
  const items: string[] = [];
  const n = 1 + (index % 3);
  for (let i = 0; i < n; i++) {
    const shape = SHAPES[Math.floor(rnd() * SHAPES.length)];
    const fill = COLOURS[Math.floor(rnd() * COLOURS.length)];
    const r = size * (0.1 + rnd() * 0.12);
    const cx = r + rnd() * (size - 2 * r);
    const cy = r + rnd() * (size - 2 * r);
    if (shape === 'circle') items.push(`<circle cx="${cx}" cy="${cy}" r="${r}" fill="${fill}"/>`);
    else if (shape === 'square') items.push(`<rect x="${cx - r}" y="${cy - r}" width="${2 * r}" height="${2 * r}" fill="${fill}"/>`);
    else items.push(`<polygon points="${cx},${cy - r} ${cx - r},${cy + r} ${cx + r},${cy + r}" fill="${fill}"/>`);
  }
  const bg = `rgb(${200 + (index % 50)},${210 + ((index * 7) % 40)},${220 + ((index * 13) % 30)})`;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect width="100%" height="100%" fill="${bg}"/>${items.join('')}</svg>`;
  return sharp(Buffer.from(svg)).png().toBuffer();
}

/** Prints a plain-text table (also valid Markdown). */
export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => String(r[i] ?? '').length)));
  const line = (r: string[]) => '| ' + r.map((c, i) => String(c ?? '').padEnd(widths[i])).join(' | ') + ' |';
  return [line(headers), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...cells.map((r) => line(r as string[]))].join('\n');
}

export function fmt(x: number, digits?: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (digits === undefined && Number.isInteger(x)) return String(x);
  const d = digits ?? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2);
  return x.toFixed(d);
}
