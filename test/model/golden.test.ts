/**
 * Parity with the Python reference (test/fixtures/golden, written by `python -m training.golden`):
 * preprocessing, image embeddings, prompt ids, first-step logits, greedy continuations (fp32 and
 * fp16) and tokenizer ids.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Engine, generate, openSequence, Sequence, sqTrainingText, TextTokenizer, vuserTurn, sqAnswerTurn } from '../../src/model';
import { BUNDLE_DIR, GOLDEN_DIR, Golden, GoldenPrompt, loadGolden, maxAbsDiff } from './helpers';

const golden: Golden = loadGolden();
let engine: Engine;

beforeAll(async () => {
  engine = await Engine.load(BUNDLE_DIR, { intraOpNumThreads: 1 });
});
afterAll(async () => {
  await engine?.release();
});

/** A sequence holding the golden prompt's chunks and the image, not yet run. */
function goldenSequence(e: Engine, p: GoldenPrompt, image: ReturnType<typeof imageOf>): Sequence {
  return Sequence.fromTokens(p.template, e.info.numLayers, image, p.input_ids);
}
function imageOf(data: Float32Array) {
  const [, N, H] = golden.image.image_features.shape;
  return { data, numTokens: N, hidden: H };
}

describe('golden parity (fp32)', () => {
  test('pixel tensor equals the Python preprocessing', async () => {
    const bytes = fs.readFileSync(path.join(GOLDEN_DIR, golden.image.file));
    const img = await engine.prepareImage(bytes);
    expect(img.dims).toEqual(golden.image.pixel_values.shape);
    expect([img.width, img.height]).toEqual([golden.image.width, golden.image.height]);
    const d = maxAbsDiff(img.pixels, golden.image.pixel_values.values);
    console.log(`pixels max |diff| = ${d.toExponential(2)}`);
    expect(d).toBeLessThan(1e-6);
  });

  test('image embeddings within 1e-4 of PyTorch', async () => {
    const pixels = Float32Array.from(golden.image.pixel_values.values);
    const { embedding } = await engine.encodeImage(pixels);
    expect([1, embedding.numTokens, embedding.hidden]).toEqual(golden.image.image_features.shape);
    const d = maxAbsDiff(embedding.data, golden.image.image_features.values);
    console.log(`image features max |diff| = ${d.toExponential(2)}`);
    expect(d).toBeLessThan(1e-4);
  });

  test.each(golden.prompts.map((p) => [p.name, p] as const))('%s: prompt ids equal the reference tokenisation', (_n, p) => {
    const pieces = engine.tokenizer.encodeImagePrompt(p.text);
    expect(TextTokenizer.flatten(pieces)).toEqual(p.input_ids);
    if (p.template === 'v1') {
      // The task layer's own prompt building gives the same ids.
      const seq = openSequence(engine.context, 'v1', imageOf(new Float32Array(golden.image.image_features.values.length)), engine.manifest.prompts.describe_brief);
      expect(seq.tokens).toEqual(p.input_ids);
      expect(seq.totalPositions).toBe(p.sequence_length);
    }
  });

  test.each(golden.prompts.map((p) => [p.name, p] as const))('%s: first-step logits within 1e-4', async (_n, p) => {
    const image = imageOf(Float32Array.from(golden.image.image_features.values));
    const seq = goldenSequence(engine, p, image);
    expect(seq.totalPositions).toBe(p.sequence_length);
    const logits = await engine.runner.prefill(seq);
    const f = p.first_step;
    const top = f.top_ids.map((id) => logits[id]);
    const dTop = maxAbsDiff(top, f.top_values);
    const dSample = maxAbsDiff(f.sample_ids.map((id) => logits[id]), f.sample_values);
    let sum = 0;
    for (const v of logits) sum += v;
    console.log(`${p.name}: first-step logits max |diff| top-20 ${dTop.toExponential(2)}, samples ${dSample.toExponential(2)}`);
    expect(dTop).toBeLessThan(1e-4);
    expect(dSample).toBeLessThan(1e-4);
    expect(Math.abs(sum - f.sum)).toBeLessThan(1e-4 * Math.max(1, Math.abs(f.sum)) + 1e-2);
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    expect(best).toBe(f.argmax);
  });

  test.each(golden.prompts.map((p) => [p.name, p] as const))('%s: greedy continuation token for token', async (_n, p) => {
    const image = imageOf(Float32Array.from(golden.image.image_features.values));
    const seq = goldenSequence(engine, p, image);
    const r = await generate(engine.runner, engine.tokenizer, seq, {
      maxNewTokens: golden.greedy_settings.max_new_tokens,
      sampling: { temperature: 0, suppressTokens: [golden.greedy_settings.eos_token_id] },
      repetitionGuard: false,
    });
    expect(r.tokenIds).toEqual(p.greedy.new_tokens);
    expect(r.text).toBe(p.greedy.text);
  });
});

describe('golden parity (fp16 weights)', () => {
  let e16: Engine;
  beforeAll(async () => {
    e16 = await Engine.load(BUNDLE_DIR, { dtype: 'fp16', intraOpNumThreads: 1 });
  });
  afterAll(async () => {
    await e16?.release();
  });

  test.each(golden.prompts.map((p) => [p.name, p] as const))('%s: fp16 greedy continuation', async (_n, p) => {
    expect(e16.info.dtype).toBe('fp16');
    const pixels = Float32Array.from(golden.image.pixel_values.values);
    const { embedding } = await e16.encodeImage(pixels);
    const seq = Sequence.fromTokens(p.template, e16.info.numLayers, embedding, p.input_ids);
    const r = await generate(e16.runner, e16.tokenizer, seq, {
      maxNewTokens: golden.greedy_settings.max_new_tokens,
      sampling: { temperature: 0, suppressTokens: [golden.greedy_settings.eos_token_id] },
      repetitionGuard: false,
    });
    expect(r.tokenIds).toEqual(p.greedy.fp16_new_tokens);
  });
});

describe('tokenizer parity', () => {
  test.each(golden.tokenizer_cases.map((c) => [JSON.stringify(c.text), c] as const))('ids of %s', (_n, c) => {
    expect(engine.tokenizer.encode(c.text, { bos: true })).toEqual(c.ids);
  });

  test('incremental turns tokenise as the trained v1_sq text', () => {
    const tok = engine.tokenizer;
    const tpl = engine.manifest.templates.v1_sq;
    const turns: [string, string, string][] = [
      ['USER', engine.manifest.prompts.describe_detailed, 'A red square.'],
      ['VUSER', 'What colour is the bar?', 'It is green.'],
      ['VUSER', 'Where is the white corner?', 'Bottom left.'],
    ];
    const full = TextTokenizer.flatten(tok.encodeImagePrompt(sqTrainingText(tpl, turns)));
    // Build it the way quiz() does: opening prompt, then after each EOS a separately tokenised piece.
    const inc: number[] = TextTokenizer.flatten(tok.encodeImagePrompt(`${tpl.system}${tpl.sep}USER: <image>\n${turns[0][1]} ASSISTANT:`));
    inc.push(...tok.encode(turns[0][2]), tok.eosId);
    for (const [, q, a] of turns.slice(1)) {
      inc.push(...tok.encode(vuserTurn(tpl)), ...tok.encode(q), tok.eosId);
      inc.push(...tok.encode(sqAnswerTurn(tpl)), ...tok.encode(a), tok.eosId);
    }
    expect(inc).toEqual(full);
  });
});
