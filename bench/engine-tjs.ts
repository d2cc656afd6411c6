/**
 * Transformers.js side of `npm run bench:engine` (started by bench/engine.ts, not by hand).
 *
 * Loads the bundle folder as a local LLaVA model (`LlavaForConditionalGeneration`, config.json +
 * onnx/{vision_encoder,embed_tokens,decoder_model_merged}[_fp16].onnx; no network: remote models
 * off and fetch replaced by a thrower) and runs the workload through `model.generate()`:
 *
 *   - the describe prompt goes in as input_ids with the image position expanded to N copies of
 *     config.image_token_index (-200, which Transformers.js's merge step replaces by the N image
 *     features), plus pixel_values = the very pixels Curio computed (their image processor is not
 *     measured);
 *   - the context sweep runs text-only prompts (no pixel_values: embed_tokens + decoder only).
 *
 * Greedy (`do_sample: false`) with `min_new_tokens = max_new_tokens`, which masks EOS exactly as
 * the other runtimes do. Per-token times come from a streamer's `put()` timestamps.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import type { InferenceSession } from 'onnxruntime-node';

import { median, parseArgs, peakRssMB, ROOT } from './common';
import { readPixels, RunClock, RuntimeResult, Workload } from './engine';

function tjsVersion(): string {
  const file = path.join(ROOT, 'node_modules', '@huggingface', 'transformers', 'package.json');
  return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const w = JSON.parse(readFileSync(String(args.workload), 'utf8')) as Workload;
  const ti = performance.now();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const T = require('@huggingface/transformers');
  const importMs = performance.now() - ti;
  const { env, LlavaForConditionalGeneration, Tensor } = T;
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = path.dirname(w.bundle) + path.sep;
  env.useFSCache = false;
  env.useBrowserCache = false;
  globalThis.fetch = (async (u: unknown) => {
    throw new Error(`network access attempted: ${String(u)}`);
  }) as typeof fetch;

  const t0 = performance.now();
  const model = await LlavaForConditionalGeneration.from_pretrained(path.basename(w.bundle), {
    dtype: w.dtype,
    device: 'cpu',
    session_options: { intraOpNumThreads: w.threads, interOpNumThreads: 1 },
  });
  const loadMs = performance.now() - t0;
  const clock = new RunClock();
  for (const s of Object.values(model.sessions as Record<string, InferenceSession>)) clock.wrap(s);

  const S = w.imageSize;
  const pixel_values = new Tensor('float32', readPixels(w.pixelsFile), [1, 3, S, S]);
  const i64 = (xs: number[]) => new Tensor('int64', BigInt64Array.from(xs.map((x) => BigInt(x))), [1, xs.length]);
  const imageToken = Number(model.config.image_token_index ?? model.config.image_token_id);

  const enc: number[] = [];
  for (let i = 0; i <= w.reps; i++) {
    const t = performance.now();
    await model.encode_image({ pixel_values });
    if (i > 0) enc.push(performance.now() - t);
  }
  const encodeMs = median(enc);

  const run = async (ids: number[], n: number, withImage: boolean) => {
    const stamps: number[] = [];
    const runAt: number[] = [];
    const streamer = {
      put() {
        stamps.push(performance.now());
        runAt.push(clock.ms);
      },
      end() {},
    };
    const out = await model.generate({
      input_ids: i64(ids),
      attention_mask: i64(ids.map(() => 1)),
      ...(withImage ? { pixel_values } : {}),
      max_new_tokens: n,
      min_new_tokens: n,
      do_sample: false,
      repetition_penalty: 1.0,
      streamer,
    });
    const tokens = (out.tolist()[0] as bigint[]).slice(ids.length).map(Number);
    return { tokens, stamps, runAt };
  };

  const describeIds = [...w.describe.before, ...new Array(w.numImageTokens).fill(imageToken), ...w.describe.after];
  const ttft: number[] = [];
  for (let i = 0; i <= w.reps; i++) {
    const r = await run(describeIds, 1, true);
    if (i > 0) ttft.push(r.stamps[1] - r.stamps[0]);
  }
  const prefillMs = median(ttft) - encodeMs;
  const describeTokens = (await run(describeIds, w.newTokens, true)).tokens;

  const contexts: RuntimeResult['contexts'] = [];
  for (const c of w.contexts) {
    const perTok: number[] = [];
    const runPerTok: number[] = [];
    let tokens: number[] = [];
    for (let r = 0; r <= w.reps; r++) {
      const res = await run(c.ids, c.steps, false);
      tokens = res.tokens;
      // stamps[0]: generate() start (prompt); stamps[1]: first new token; then one per step.
      const steps = res.stamps.length - 2;
      if (r > 0) {
        perTok.push((res.stamps[res.stamps.length - 1] - res.stamps[1]) / steps);
        runPerTok.push((res.runAt[res.runAt.length - 1] - res.runAt[1]) / steps);
      }
    }
    const ms = median(perTok);
    const runMs = median(runPerTok);
    contexts.push({ context: c.context, steps: c.steps, msPerToken: ms, tokensPerSecond: 1000 / ms, tokens, runMsPerToken: runMs, jsOverheadPct: (100 * (ms - runMs)) / ms });
  }
  const positions = describeIds.length;
  const result: RuntimeResult = {
    runtime: 'transformers.js',
    version: `@huggingface/transformers ${tjsVersion()}`,
    dtype: w.dtype,
    threads: w.threads,
    loadMs,
    importMs,
    encodeMs,
    prefill: {
      positions,
      ms: prefillMs,
      tokensPerSecond: (positions * 1000) / prefillMs,
      note: 'time to first token of generate() with pixel_values, minus the median encode time',
    },
    describeTokens,
    contexts,
    peakRssMB: peakRssMB(),
    note: 'full LLaVA path: image via pixel_values and 64x image_token_index (-200) placeholders; context sweep text-only',
  };
  result.note = result.note!.replace('64x', `${w.numImageTokens}x`);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
