/**
 * `npm run bench:engine` — single-request engine speed, Curio against two other runtimes on the
 * very same bundle, in one run:
 *
 *   - Curio (src/model: Engine, ModelRunner, generate) on onnxruntime-node;
 *   - the PyTorch reference (training/sqllava/model.py with its KV cache), bench/torch_reference.py,
 *     weights read back from the bundle's ONNX initializers;
 *   - Transformers.js (@huggingface/transformers, LlavaForConditionalGeneration.generate) on the
 *     bundle's config.json / onnx files, bench/engine-tjs.ts.
 *
 * Each runtime runs in its own process (so peak RSS is its own) on the same workload, written
 * here to a JSON file: the same rendered image (the same normalised pixels), the describe prompt
 * (text | image | text), and text-only prompts of exactly C tokens for the context sweep. Decoding
 * is greedy at batch 1 with EOS suppressed, so every runtime produces exactly `--new-tokens`
 * tokens; the token ids are compared across runtimes.
 *
 *   npm run bench:engine -- [--bundle DIR] [--threads N] [--new-tokens 32] [--reps 3]
 *                           [--contexts 32,128,480] [--only curio,pytorch,transformers.js] [--rounds 1]
 *
 * Child mode (internal): `tsx bench/engine.ts --child curio --workload FILE`.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { InferenceSession } from 'onnxruntime-node';

import { Engine } from '../src/model/engine';
import { generate } from '../src/model/generate';
import { openSequence } from '../src/model/tasks';
import { Sequence } from '../src/model/sequence';
import type { ModelRunner } from '../src/model/runner';
import { fmt, machine, median, parseArgs, peakRssMB, pickBundle, renderScene, ROOT, table } from './common';

/** What every runtime is asked to do (bench/engine.ts writes it; the children read it). */
export interface Workload {
  bundle: string;
  dtype: string;
  threads: number;
  newTokens: number;
  reps: number;
  eos: number;
  imageSize: number;
  numImageTokens: number;
  pixelsFile: string;
  describe: { before: number[]; after: number[] };
  contexts: { context: number; steps: number; ids: number[] }[];
}

/** What every runtime reports. */
export interface RuntimeResult {
  runtime: string;
  version: string;
  dtype: string;
  threads: number;
  loadMs: number;
  importMs?: number;
  encodeMs: number;
  prefill: { positions: number; ms: number; tokensPerSecond: number; note?: string };
  describeTokens: number[];
  contexts: { context: number; steps: number; msPerToken: number; tokensPerSecond: number; tokens: number[]; runMsPerToken?: number; jsOverheadPct?: number }[];
  peakRssMB: number;
  note?: string;
}

// ----------------------------------------------------------------------------------------------
// Session-time accounting: wraps session.run so the time spent inside ORT can be subtracted from
// a decode step's wall time (= the JS overhead of the step: embedding lookup glue, feeds, cache
// bookkeeping, argmax, streaming detokenisation, awaits).

export class RunClock {
  ms = 0;
  calls = 0;
  wrap(session: InferenceSession): void {
    const orig = session.run.bind(session) as (...a: unknown[]) => Promise<unknown>;
    (session as unknown as { run: unknown }).run = async (...args: unknown[]) => {
      const t = performance.now();
      try {
        return await orig(...args);
      } finally {
        this.ms += performance.now() - t;
        this.calls++;
      }
    };
  }
}

export function readPixels(file: string): Float32Array {
  const buf = readFileSync(file);
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

/** Wraps a runner so that EOS can never be the greedy pick (fixed-length generations). */
function noEos(runner: ModelRunner, eos: number): ModelRunner {
  const mask = (l: Float32Array) => {
    l[eos] = -Infinity;
    return l;
  };
  return Object.assign(Object.create(runner) as ModelRunner, {
    prefill: async (s: Sequence) => mask(await runner.prefill(s)),
    decodeStep: async (seqs: readonly Sequence[]) => (await runner.decodeStep(seqs)).map(mask),
  });
}

async function runCurio(w: Workload): Promise<RuntimeResult> {
  const t0 = performance.now();
  const engine = await Engine.load(w.bundle, { intraOpNumThreads: w.threads, interOpNumThreads: 1 });
  const loadMs = performance.now() - t0;
  const clock = new RunClock();
  const b = (engine.runner as unknown as { bundle: { sessions: Record<string, InferenceSession> } }).bundle;
  for (const s of Object.values(b.sessions)) clock.wrap(s);
  const pixels = readPixels(w.pixelsFile);
  const runner = noEos(engine.runner, w.eos);
  const tok = engine.tokenizer;

  const enc: number[] = [];
  let embedding = (await engine.encodeImage(pixels)).embedding; // warm-up
  for (let i = 0; i < w.reps; i++) {
    const e = await engine.encodeImage(pixels);
    enc.push(e.ms);
    embedding = e.embedding;
  }

  const describeSeq = () => {
    const s = new Sequence('v1', engine.runner.layers, embedding);
    s.append([{ kind: 'text', ids: w.describe.before }, { kind: 'image' }, { kind: 'text', ids: w.describe.after }]);
    return s;
  };
  const gen = (seq: Sequence, n: number, stamps?: number[]) =>
    generate(runner, tok, seq, {
      maxNewTokens: n,
      sampling: { temperature: 0 },
      repetitionGuard: false,
      onToken: stamps ? () => stamps.push(performance.now()) : undefined,
    });

  const prefills: number[] = [];
  for (let i = 0; i <= w.reps; i++) {
    const r = await gen(describeSeq(), 1);
    if (i > 0) prefills.push(r.timings.firstTokenMs); // text embedding + decoder pass + first pick
  }
  const positions = w.describe.before.length + embedding.numTokens + w.describe.after.length;
  const describeTokens = (await gen(describeSeq(), w.newTokens)).tokenIds;

  const contexts: RuntimeResult['contexts'] = [];
  for (const c of w.contexts) {
    const perTok: number[] = [];
    const runPerTok: number[] = [];
    let tokens: number[] = [];
    for (let r = 0; r <= w.reps; r++) {
      const seq = new Sequence('v1', engine.runner.layers, null);
      seq.appendTokens(c.ids);
      const stamps: number[] = [];
      let runAtFirst = 0;
      const res = await generate(runner, tok, seq, {
        maxNewTokens: c.steps,
        sampling: { temperature: 0 },
        repetitionGuard: false,
        onToken: (ev) => {
          if (ev.tokenId < 0) return;
          stamps.push(performance.now());
          if (stamps.length === 1) runAtFirst = clock.ms;
        },
      });
      const runMs = clock.ms - runAtFirst;
      tokens = res.tokenIds;
      if (r > 0) {
        const steps = stamps.length - 1;
        perTok.push((stamps[stamps.length - 1] - stamps[0]) / steps);
        runPerTok.push(runMs / steps);
      }
    }
    const ms = median(perTok);
    const runMs = median(runPerTok);
    contexts.push({
      context: c.context,
      steps: c.steps,
      msPerToken: ms,
      tokensPerSecond: 1000 / ms,
      tokens,
      runMsPerToken: runMs,
      jsOverheadPct: (100 * (ms - runMs)) / ms,
    });
  }
  await engine.release();
  const ortVersion = require('onnxruntime-node/package.json').version as string;
  return {
    runtime: 'curio',
    version: `onnxruntime-node ${ortVersion}`,
    dtype: engine.info.dtype,
    threads: w.threads,
    loadMs,
    encodeMs: median(enc),
    prefill: { positions, ms: median(prefills), tokensPerSecond: (positions * 1000) / median(prefills) },
    describeTokens,
    contexts,
    peakRssMB: peakRssMB(),
  };
}

// ----------------------------------------------------------------------------------------------
// Orchestrator.

function runChild(cmd: string, args: string[], label: string): Promise<RuntimeResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OMP_NUM_THREADS: undefined } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      try {
        if (code !== 0) throw new Error(`exit ${code}`);
        resolve(JSON.parse(last) as RuntimeResult);
      } catch (e) {
        reject(new Error(`${label} failed (${(e as Error).message}):\n${err.slice(-3000)}\n${out.slice(-2000)}`));
      }
    });
  });
}

/** Best figures over rounds (fastest times, largest peak RSS); tokens must agree between rounds. */
function bestOf(rs: RuntimeResult[]): RuntimeResult {
  const minBy = <T>(xs: T[], f: (x: T) => number) => xs.reduce((a, b) => (f(b) < f(a) ? b : a));
  const first = rs[0];
  return {
    ...first,
    loadMs: Math.min(...rs.map((r) => r.loadMs)),
    encodeMs: Math.min(...rs.map((r) => r.encodeMs)),
    prefill: minBy(rs.map((r) => r.prefill), (p) => p.ms),
    contexts: first.contexts.map((c, i) => minBy(rs.map((r) => r.contexts[i]), (x) => x.msPerToken)),
    peakRssMB: Math.max(...rs.map((r) => r.peakRssMB)),
    note: [first.note, rs.some((r) => r.describeTokens.join() !== first.describeTokens.join()) ? 'greedy tokens differed between rounds' : '']
      .filter(Boolean)
      .join('; ') || undefined,
  };
}

function sameTokens(a: number[], b: number[]): string {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  const i = a.findIndex((x, k) => x !== b[k]);
  return i < 0 ? `identical (${a.length} tokens)` : `differ from token ${i} of ${a.length}`;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.child === 'curio') {
    const w = JSON.parse(readFileSync(String(args.workload), 'utf8')) as Workload;
    process.stdout.write(JSON.stringify(await runCurio(w)) + '\n');
    return;
  }
  const { dir, note } = pickBundle(args.bundle);
  const threads = Number(args.threads ?? os.cpus().length);
  const newTokens = Number(args['new-tokens'] ?? 32);
  const reps = Number(args.reps ?? 3);
  const only = typeof args.only === 'string' ? args.only.split(',') : ['curio', 'pytorch', 'transformers.js'];

  // The workload: prompt ids from Curio's tokenizer and template, pixels from Curio's preprocessing.
  const engine = await Engine.load(dir, { intraOpNumThreads: 1 });
  const m = engine.manifest;
  const maxPos = m.decoder.max_position_embeddings;
  const contexts = typeof args.contexts === 'string' ? args.contexts.split(',').map(Number) : [32, 128, 512];
  const fitted = contexts.map((c) => Math.min(c, maxPos - newTokens));
  const img = await engine.prepareImage(await renderScene(7));
  const work = mkdtempSync(path.join(os.tmpdir(), 'curio-bench-'));
  const pixelsFile = path.join(work, 'pixels.f32');
  writeFileSync(pixelsFile, Buffer.from(img.pixels.buffer, img.pixels.byteOffset, img.pixels.byteLength));
  const fake = { data: new Float32Array(m.image.num_tokens * m.decoder.hidden_size), numTokens: m.image.num_tokens, hidden: m.decoder.hidden_size };
  const ds = openSequence(engine.context, 'v1', fake, m.prompts.describe_brief);
  const [before, , after] = ds.pending as { kind: string; ids: number[] }[];
  const text =
    'A chatbot that looks at pictures answers questions about the shapes it sees: a red circle, a blue square and a green ' +
    'triangle on a light background, each in its own place, some large and some small. ';
  let long = engine.tokenizer.encode(text.repeat(8), { bos: true });
  while (long.length < maxPos) long = long.concat(engine.tokenizer.encode(text.repeat(8)));
  const workload: Workload = {
    bundle: dir,
    dtype: engine.info.dtype,
    threads,
    newTokens,
    reps,
    eos: engine.tokenizer.eosId,
    imageSize: m.image.size,
    numImageTokens: m.image.num_tokens,
    pixelsFile,
    describe: { before: before.ids, after: after.ids },
    contexts: fitted.map((c) => ({ context: c, steps: newTokens, ids: long.slice(0, c) })),
  };
  await engine.release();
  const workloadFile = path.join(work, 'workload.json');
  writeFileSync(workloadFile, JSON.stringify(workload));

  const mc = machine();
  console.log(`# bench:engine  ${new Date().toISOString()}`);
  console.log(`machine: ${mc.cpu}, ${mc.cores} cores, ${fmt(mc.memGiB, 1)} GiB RAM, Node ${mc.node}, ${mc.os}`);
  console.log(`bundle: ${path.relative(ROOT, dir)} (${m.name}, ${engine.info.dtype}, ${m.decoder.num_layers} layers, hidden ${m.decoder.hidden_size}, context ${maxPos}, ${m.image.num_tokens} image tokens)`);
  if (note) console.log(`NOTE: ${note}`);
  const training = (() => {
    try {
      return execFileSync('pgrep', ['-f', 'training.train'], { encoding: 'utf8' }).trim();
    } catch {
      return '';
    }
  })();
  if (training) console.log(`NOTE: a training job is running (pid ${training.split('\n').join(', ')}): figures are under CPU contention`);
  console.log(
    `workload: ${threads} intra-op thread(s) per runtime, batch 1, greedy, EOS suppressed, ${newTokens} new tokens, ` +
      `median of ${reps} runs after a warm-up; describe prompt ${workload.describe.before.length}+${m.image.num_tokens}+${workload.describe.after.length} positions; ` +
      `decode contexts ${fitted.join('/')}${fitted.some((c, i) => c !== contexts[i]) ? ` (asked ${contexts.join('/')}; the model's context is ${maxPos} and each run adds ${newTokens} tokens)` : ''}`,
  );

  const rounds = Number(args.rounds ?? 1);
  if (rounds > 1) console.log(`rounds: ${rounds}, the runtimes taking turns; each figure is the best round (least disturbed by other load)`);
  const runs = new Map<string, RuntimeResult[]>();
  const tsx = path.join(ROOT, 'node_modules', '.bin', 'tsx');
  for (let round = 0; round < rounds; round++) {
    for (const rt of only) {
      process.stderr.write(`round ${round + 1}: running ${rt}...\n`);
      try {
        let r: RuntimeResult | null = null;
        if (rt === 'curio') r = await runChild(tsx, [path.join(ROOT, 'bench', 'engine.ts'), '--child', 'curio', '--workload', workloadFile], rt);
        else if (rt === 'pytorch') r = await runChild('/usr/bin/python3', [path.join(ROOT, 'bench', 'torch_reference.py'), workloadFile], rt);
        else if (rt === 'transformers.js') r = await runChild(tsx, [path.join(ROOT, 'bench', 'engine-tjs.ts'), '--workload', workloadFile], rt);
        if (r) runs.set(rt, [...(runs.get(rt) ?? []), r]);
      } catch (e) {
        console.log(`\n${rt}: FAILED\n${(e as Error).message}`);
      }
    }
  }
  const results = [...runs.values()].map(bestOf);
  rmSync(work, { recursive: true, force: true });
  report(results, fitted);
}

function report(results: RuntimeResult[], contexts: number[]): void {
  const by = (name: string) => results.find((r) => r.runtime === name);
  console.log('\n## Figures\n');
  const rows: (string | number)[][] = results.map((r) => [
    r.runtime,
    r.version,
    r.dtype,
    r.loadMs,
    r.encodeMs,
    r.prefill.tokensPerSecond,
    ...contexts.map((c) => r.contexts.find((x) => x.context === c)?.tokensPerSecond ?? NaN),
    r.peakRssMB,
  ]);
  console.log(
    table(['runtime', 'version', 'weights', 'load ms', 'encode ms', 'prefill tok/s', ...contexts.map((c) => `decode tok/s @${c}`), 'peak RSS MB'], rows),
  );
  for (const r of results) {
    if (r.prefill.note) console.log(`(${r.runtime} prefill: ${r.prefill.note})`);
    if (r.note) console.log(`(${r.runtime}: ${r.note})`);
  }

  const curio = by('curio');
  if (curio) {
    console.log('\n## Curio decode step: time per token and JS overhead (step wall time minus time inside session.run)\n');
    console.log(
      table(
        ['context', 'ms/token', 'in session.run ms', 'JS overhead %'],
        curio.contexts.map((c) => [c.context, fmt(c.msPerToken, 3), fmt(c.runMsPerToken ?? NaN, 3), fmt(c.jsOverheadPct ?? NaN, 1)]),
      ),
    );
    const tjs = by('transformers.js');
    if (tjs?.contexts.some((c) => c.jsOverheadPct !== undefined)) {
      console.log('\n(for comparison, Transformers.js: ' + tjs.contexts.map((c) => `@${c.context} ${fmt(c.jsOverheadPct ?? NaN, 1)}%`).join(', ') + ')');
    }
    console.log('\n## Per-token time vs context (ms/token; flat = the KV cache works)\n');
    console.log(
      table(
        ['runtime', ...contexts.map((c) => `@${c}`), `@${contexts[contexts.length - 1]} / @${contexts[0]}`],
        results.map((r) => {
          const ms = contexts.map((c) => r.contexts.find((x) => x.context === c)?.msPerToken ?? NaN);
          return [r.runtime, ...ms.map((x) => fmt(x, 3)), fmt(ms[ms.length - 1] / ms[0], 2) + '×'];
        }),
      ),
    );
    console.log('\n## Ratios (Curio / other; >1 = Curio faster)\n');
    const ratioRows: (string | number)[][] = [];
    for (const other of results.filter((r) => r.runtime !== 'curio')) {
      ratioRows.push([
        other.runtime,
        fmt(other.loadMs / curio.loadMs, 2) + '×',
        fmt(other.encodeMs / curio.encodeMs, 2) + '×',
        fmt(curio.prefill.tokensPerSecond / other.prefill.tokensPerSecond, 2) + '×',
        ...contexts.map((c) => {
          const a = curio.contexts.find((x) => x.context === c);
          const b = other.contexts.find((x) => x.context === c);
          return a && b ? fmt(a.tokensPerSecond / b.tokensPerSecond, 2) + '×' : 'n/a';
        }),
        fmt(other.peakRssMB / curio.peakRssMB, 2) + '×',
      ]);
    }
    console.log(table(['vs', 'load (time)', 'encode (time)', 'prefill tok/s', ...contexts.map((c) => `decode @${c}`), 'peak RSS'], ratioRows));

    console.log('\n## Greedy output identity (token ids vs Curio)\n');
    const idRows: string[][] = [];
    for (const other of results.filter((r) => r.runtime !== 'curio')) {
      idRows.push([
        other.runtime,
        sameTokens(curio.describeTokens, other.describeTokens),
        ...contexts.map((c) => sameTokens(curio.contexts.find((x) => x.context === c)?.tokens ?? [], other.contexts.find((x) => x.context === c)?.tokens ?? [])),
      ]);
    }
    console.log(table(['vs', 'describe (image)', ...contexts.map((c) => `text @${c}`)], idRows));

    console.log('\n## Targets\n');
    const torch = by('pytorch');
    const tjs2 = by('transformers.js');
    const dec = (r: RuntimeResult | undefined) => (r ? median(r.contexts.map((c) => c.tokensPerSecond)) : NaN);
    const identical = (r: RuntimeResult | undefined) =>
      !!r && sameTokens(curio.describeTokens, r.describeTokens).startsWith('identical') &&
      contexts.every((c) => sameTokens(curio.contexts.find((x) => x.context === c)?.tokens ?? [], r.contexts.find((x) => x.context === c)?.tokens ?? []).startsWith('identical'));
    const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');
    if (torch) {
      const x = dec(curio) / dec(torch);
      console.log(`- decode >= 2x PyTorch reference (median over contexts): ${fmt(x, 2)}x -> ${verdict(x >= 2)}; greedy output ${identical(torch) ? 'identical' : 'NOT identical'}`);
    }
    if (tjs2) {
      const x = dec(curio) / dec(tjs2);
      console.log(`- decode >= 1.5x Transformers.js: ${fmt(x, 2)}x -> ${verdict(x >= 1.5)}; greedy output ${identical(tjs2) ? 'identical' : 'NOT identical'}`);
    }
    const ms = curio.contexts.map((c) => c.msPerToken);
    const growth = ms[ms.length - 1] / ms[0];
    console.log(`- per-token time flat in context: @${contexts[contexts.length - 1]} / @${contexts[0]} = ${fmt(growth, 2)}x -> ${verdict(growth < 1.5)} (flat taken as < 1.5x over a ${fmt(contexts[contexts.length - 1] / contexts[0], 0)}x longer context)`);
    const ovh = Math.max(...curio.contexts.map((c) => c.jsOverheadPct ?? NaN));
    console.log(`- JS overhead per decode step < 10%: worst ${fmt(ovh, 1)}% -> ${verdict(ovh < 10)}`);
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
