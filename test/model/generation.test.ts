/** Generation behaviour on the golden (random-weight) bundle: sampling, streaming, cancellation, cache reuse, quiz, batching. */
import * as fs from 'node:fs';
import * as path from 'node:path';

import {
  argmax,
  Engine,
  generate,
  IMAGE_TOKEN_INDEX,
  isLooping,
  PreparedImage,
  Rng,
  sampleToken,
  Sequence,
  StreamDecoder,
  userTurn,
  vuserTurn,
} from '../../src/model';
import { BUNDLE_DIR, GOLDEN_DIR, maxAbsDiff } from './helpers';

let engine: Engine;
let image: PreparedImage;

beforeAll(async () => {
  engine = await Engine.load(BUNDLE_DIR, { intraOpNumThreads: 1, repetitionGuard: false });
  image = await engine.prepareImage(fs.readFileSync(path.join(GOLDEN_DIR, 'image.png')));
});
afterAll(async () => {
  await engine?.release();
});

describe('sampling', () => {
  test('mulberry32 is deterministic per seed', () => {
    const a = new Rng(7);
    const b = new Rng(7);
    const c = new Rng(8);
    const xs = Array.from({ length: 5 }, () => a.next());
    expect(Array.from({ length: 5 }, () => b.next())).toEqual(xs);
    expect(Array.from({ length: 5 }, () => c.next())).not.toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
  });

  test('greedy, top-k 1, suppression, top-p', () => {
    const logits = Float32Array.from([0.1, 3, 2.9, -1, 3]);
    expect(argmax(logits)).toBe(1); // first of the ties, as torch.argmax
    expect(sampleToken(logits, { temperature: 0 }, null)).toBe(1);
    expect(sampleToken(logits, { temperature: 1, topK: 1 }, new Rng(1))).toBe(1);
    expect(sampleToken(logits, { temperature: 0, suppressTokens: [1, 4] }, null)).toBe(2);
    const peaked = Float32Array.from([0, 10, 0, 0]);
    for (let s = 0; s < 20; s++) expect(sampleToken(peaked, { temperature: 1, topP: 0.9 }, new Rng(s))).toBe(1);
    // temperature spreads choices among the top-k only
    const seen = new Set<number>();
    const rng = new Rng(3);
    for (let i = 0; i < 200; i++) seen.add(sampleToken(logits, { temperature: 5, topK: 3 }, rng));
    expect([...seen].sort()).toEqual([1, 2, 4]);
  });

  test('repetition penalty changes the greedy choice', () => {
    const logits = Float32Array.from([1, 2.0, 1.9]);
    expect(sampleToken(logits, { temperature: 0, repetitionPenalty: 1.2 }, null, [1])).toBe(2);
  });

  test('loop detection', () => {
    expect(isLooping(new Array(40).fill(5))).toBe(true);
    expect(isLooping(Array.from({ length: 60 }, (_, i) => [1, 2, 3][i % 3]))).toBe(true);
    expect(isLooping(Array.from({ length: 60 }, (_, i) => i))).toBe(false);
    expect(isLooping([1, 1, 1])).toBe(false);
  });

  test('a sampled answer is reproducible with its seed', async () => {
    const opts = { temperature: 1.0, topK: 50, topP: 0.95, maxNewTokens: 12 };
    const a = await engine.ask(image, 'What is in the picture?', { ...opts, seed: 1234 });
    const b = await engine.ask(image, 'What is in the picture?', { ...opts, seed: 1234 });
    const c = await engine.ask(image, 'What is in the picture?', { ...opts, seed: 99 });
    expect(a.seed).toBe(1234);
    expect(b.text).toBe(a.text);
    expect(c.text).not.toBe(a.text);
  });
});

describe('streaming and cancellation', () => {
  test('the streamed text equals the final answer', async () => {
    let streamed = '';
    let events = 0;
    const r = await engine.describe(image, 'detailed', { maxNewTokens: 30, onToken: (ev) => ((streamed += ev.text), events++) });
    expect(r.tokens.generated).toBeGreaterThan(0);
    expect(events).toBeGreaterThanOrEqual(r.tokens.generated);
    expect(streamed).toBe(r.text);
    expect(r.timings.imageEncodeMs).toBeGreaterThan(0);
    expect(r.timings.firstTokenMs).toBeGreaterThan(0);
    expect(['eos', 'length']).toContain(r.finishReason);
  });

  test('StreamDecoder holds back incomplete UTF-8 and never splits a character', () => {
    const tok = engine.tokenizer;
    const text = 'Tea ☕ and 🦙 llamas, crème brûlée';
    const ids = tok.encode(text);
    const d = tok.streamDecoder();
    const parts = ids.map((id) => d.push(id));
    parts.push(d.flush());
    expect(parts.join('')).toBe(tok.decode(ids));
    for (const p of parts) expect(p).not.toMatch(/\uFFFD/);
    // emoji are byte-fallback tokens here: at least one push had to wait
    expect(parts.filter((p) => p === '').length).toBeGreaterThan(0);
    const manual = new StreamDecoder((xs) => xs.map((x) => String.fromCharCode(96 + x)).join(''));
    expect(manual.push(1) + manual.push(2) + manual.flush()).toBe('ab');
  });

  test('shouldStop cancels between decode steps', async () => {
    let n = 0;
    const r = await engine.describe(image, 'detailed', {
      maxNewTokens: 50,
      onToken: () => n++,
      shouldStop: () => n >= 3,
    });
    expect(r.finishReason).toBe('cancelled');
    expect(r.tokens.generated).toBe(3);
  });

  test('an aborted signal stops before any decoder run', async () => {
    const ac = new AbortController();
    ac.abort();
    const r = await engine.ask(image, 'Anything?', { signal: ac.signal });
    expect(r.finishReason).toBe('cancelled');
    expect(r.tokens.generated).toBe(0);
  });

  test('empty and special-token-only questions are refused', async () => {
    await expect(engine.ask(image, '   ')).rejects.toThrow(/empty/);
    await expect(engine.ask(image, '</s><s>')).rejects.toThrow(/empty/);
  });
});

describe('conversation state', () => {
  test('chat continuation gives the same tokens as one full prefill of the conversation', async () => {
    const first = await engine.describe(image, 'brief', { maxNewTokens: 10 });
    const seq = first.sequence;
    const cachedBefore = seq.cache.length;
    const chat = await engine.chat(seq, 'What colour is the square?', { maxNewTokens: 12 });
    // Only the new tokens went through the decoder.
    expect(chat.tokens.prompt).toBe(seq.cache.length - cachedBefore - (chat.tokens.generated - 1));
    expect(chat.tokens.prompt).toBeLessThan(40);

    // Rebuild the same conversation from its tokens alone and prefill it in one go.
    const upToChat = seq.tokens.slice(0, seq.tokens.length - chat.tokens.generated);
    const full = Sequence.fromTokens('v1', engine.info.numLayers, seq.image, upToChat);
    const again = await generate(engine.runner, engine.tokenizer, full, { maxNewTokens: 12, sampling: { temperature: 0 }, repetitionGuard: false });
    expect(again.tokenIds).toEqual(chat.tokens.generated ? seq.tokens.slice(-chat.tokens.generated) : []);
    expect(again.text).toBe(chat.text);
    // And the caches agree.
    for (let l = 0; l < engine.info.numLayers; l++) {
      expect(full.cache.length).toBe(seq.cache.length);
      expect(maxAbsDiff(full.cache.layers[l].key, seq.cache.layers[l].key)).toBeLessThan(1e-4);
    }
  });

  test('the user turn follows the EOS that closed the answer', async () => {
    const r = await engine.describe(image, 'brief', { maxNewTokens: 4 });
    await engine.chat(r.sequence, 'Why?', { maxNewTokens: 1 });
    const tok = engine.tokenizer;
    const turn = tok.encode(userTurn(engine.manifest.templates.v1, 'Why?'));
    const toks = r.sequence.tokens;
    const at = toks.length - 2 - turn.length; // [..., EOS, USER: Why? ASSISTANT:, generated]
    expect(toks.slice(at + 1, at + 1 + turn.length)).toEqual(turn);
    expect(toks[at]).toBe(tok.eosId);
  });

  test('a snapshot survives structured clone and continues identically', async () => {
    const r = await engine.describe(image, 'brief', { maxNewTokens: 6 });
    const clone = structuredClone(r.sequence.snapshot());
    const a = await engine.chat(clone, 'And the bar?', { maxNewTokens: 8 });
    const b = await engine.chat(r.sequence, 'And the bar?', { maxNewTokens: 8 });
    expect(a.text).toBe(b.text);
  });

  test('quiz: N rounds of VUSER question + answer in one sequence', async () => {
    const events: string[] = [];
    const q = await engine.quiz(image, { rounds: 2, seed: 5, maxNewTokens: 8, onToken: (ev) => events.push(`${ev.part}:${ev.round}`) });
    expect(q.rounds.length).toBe(2);
    expect(q.seed).toBe(5);
    const tok = engine.tokenizer;
    const vuser = tok.encode(vuserTurn(engine.manifest.templates.v1_sq));
    const toks = q.sequence.tokens;
    let count = 0;
    for (let i = 0; i + vuser.length <= toks.length; i++) {
      if (vuser.every((v, j) => toks[i + j] === v) && toks[i - 1] === tok.eosId) count++;
    }
    expect(count).toBe(2);
    expect(toks.filter((t) => t === IMAGE_TOKEN_INDEX).length).toBe(1);
    expect(q.sequence.template).toBe('v1_sq');
    // One sequence: every position except the last pending token is in the cache.
    expect(q.sequence.cache.length + q.sequence.pendingPositions).toBe(q.sequence.totalPositions);
    expect(new Set(events)).toEqual(new Set(['description:-1', 'question:0', 'answer:0', 'question:1', 'answer:1']));
    const again = await engine.quiz(image, { rounds: 2, seed: 5, maxNewTokens: 8 });
    expect(again.rounds).toEqual(q.rounds);
  });

  test('a sequence rewound to a snapshot generates as if the later turns never happened', async () => {
    const r = await engine.ask(image, 'What is this?', { maxNewTokens: 6 });
    const seq = r.sequence;
    const mark = seq.snapshot();
    const first = await engine.chat(seq, 'And the bar?', { maxNewTokens: 6 });
    const firstTokens = [...seq.tokens];
    expect(firstTokens.length).toBeGreaterThan(mark.tokens.length);
    seq.rewind(mark);
    expect(seq.tokens).toEqual(mark.tokens);
    expect(seq.cache).toBe(mark.cache);
    const again = await engine.chat(seq, 'And the bar?', { maxNewTokens: 6 });
    expect(again.text).toBe(first.text);
    expect(seq.tokens).toEqual(firstTokens);
  });

  test('context overflow is reported, not crashed', async () => {
    const long = 'word '.repeat(400);
    await expect(engine.ask(image, long)).rejects.toMatchObject({ code: 'context_full' });
  });
});

describe('batched decode step', () => {
  test('sequences of different lengths decoded together match decoding them alone', async () => {
    const { embedding } = await engine.encodeImage(image);
    const prompts = ['What is this?', 'Describe the colours of the picture in a few words, please.'];
    const make = (q: string) => {
      const s = Sequence.fromTokens('v1', engine.info.numLayers, embedding, engine.tokenizer.encodeImagePrompt(`A chat. USER: <image>\n${q} ASSISTANT:`).flatMap((p) => (p.kind === 'text' ? p.ids : [IMAGE_TOKEN_INDEX])));
      return s;
    };
    const solo = prompts.map(make);
    const batch = prompts.map(make);
    const steps = 6;
    const soloIds: number[][] = [[], []];
    const soloLogits: Float32Array[][] = [[], []];
    for (let i = 0; i < 2; i++) {
      let logits = await engine.runner.prefill(solo[i]);
      for (let s = 0; s < steps; s++) {
        const id = argmax(logits);
        soloIds[i].push(id);
        solo[i].appendTokens([id]);
        logits = (await engine.runner.decodeStep([solo[i]]))[0];
        soloLogits[i].push(logits);
      }
    }
    let logits = await Promise.all(batch.map((s) => engine.runner.prefill(s)));
    expect(batch[0].cache.length).not.toBe(batch[1].cache.length);
    const batchIds: number[][] = [[], []];
    let maxDiff = 0;
    for (let s = 0; s < steps; s++) {
      batch.forEach((seq, i) => {
        const id = argmax(logits[i]);
        batchIds[i].push(id);
        seq.appendTokens([id]);
      });
      logits = await engine.runner.decodeStep(batch);
      for (let i = 0; i < 2; i++) maxDiff = Math.max(maxDiff, maxAbsDiff(logits[i], soloLogits[i][s]));
    }
    expect(batchIds).toEqual(soloIds);
    console.log(`batched vs single decode: max |logit diff| ${maxDiff.toExponential(2)}`);
    expect(maxDiff).toBeLessThan(1e-4);
    expect(batch[1].cache.length).toBe(solo[1].cache.length);
  });
});
