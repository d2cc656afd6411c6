import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { Engine, openSequence } from '../../src/model';
import type { Workload } from '../../bench/engine';

/**
 * The TypeScript engine and the PyTorch reference (training/sqllava/model.py, weights read back
 * from the bundled model's ONNX files by bench/torch_reference.py) give the same greedy tokens
 * on the bundled model, for the describe prompt with an image.
 */
const ROOT = path.resolve(__dirname, '../..');
const BUNDLE = path.join(ROOT, 'models/sq-llava-micro');
const STEPS = 20;

it('greedy tokens match PyTorch token for token on the bundled model', async () => {
  const engine = await Engine.load(BUNDLE, { intraOpNumThreads: 1 });
  try {
    const m = engine.manifest;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="200" height="140"><rect width="200" height="140" fill="#d8ecff"/>
      <circle cx="40" cy="35" r="26" fill="#208020"/><rect x="140" y="90" width="24" height="24" fill="#c03030"/></svg>`;
    const img = await engine.prepareImage(new Uint8Array(await sharp(Buffer.from(svg)).png().toBuffer()));
    const dir = mkdtempSync(path.join(tmpdir(), 'curio-parity-'));
    const pixelsFile = path.join(dir, 'pixels.f32');
    writeFileSync(pixelsFile, Buffer.from(img.pixels.buffer, img.pixels.byteOffset, img.pixels.byteLength));

    // Curio: the real describe path (prompt pieces, image splice, KV-cache decode), greedy.
    const { embedding } = await engine.encodeImage(img);
    const seq = openSequence(engine.context, 'v1', embedding, m.prompts.describe_brief);
    const [before, , after] = seq.pending as Array<{ kind: string; ids: number[] }>;
    const described = await engine.describe({ embedding }, 'brief', { maxNewTokens: STEPS, repetitionGuard: false });
    const curioIds = described.sequence.tokens.slice(seq.tokens.length);

    const workload: Workload = {
      bundle: BUNDLE,
      dtype: engine.info.dtype,
      threads: 1,
      newTokens: STEPS,
      reps: 1,
      eos: engine.tokenizer.eosId,
      imageSize: m.image.size,
      numImageTokens: m.image.num_tokens,
      pixelsFile,
      describe: { before: before.ids, after: after.ids },
      contexts: [],
    };
    const workloadFile = path.join(dir, 'workload.json');
    writeFileSync(workloadFile, JSON.stringify(workload));
    const torch = JSON.parse(execFileSync('/usr/bin/python3', [path.join(ROOT, 'bench/torch_reference.py'), workloadFile], { encoding: 'utf8' }));

    // PyTorch suppresses EOS to make a fixed number of tokens; Curio stops at it. Up to Curio's
    // EOS the two must agree exactly, and Curio must have said something.
    const eos = engine.tokenizer.eosId;
    const answer = curioIds[curioIds.length - 1] === eos ? curioIds.slice(0, -1) : curioIds;
    expect(answer.length).toBeGreaterThan(5);
    expect(answer).toEqual(torch.describeTokens.slice(0, answer.length));
  } finally {
    await engine.release();
  }
}, 120_000);
