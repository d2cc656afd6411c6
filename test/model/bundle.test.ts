/** Bundle validation: an inconsistent bundle is refused at load time with an error naming the problem. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { BundleError, Engine, loadBundle, readManifest } from '../../src/model';
import { BUNDLE_DIR } from './helpers';

const tmpDirs: string[] = [];

/** A copy of the golden bundle (ONNX files symlinked: they are only read) with model.json edited. */
function bundleCopy(edit?: (m: any) => void, opts: { drop?: string[] } = {}): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'curio-bundle-'));
  tmpDirs.push(dir);
  fs.mkdirSync(path.join(dir, 'onnx'));
  for (const rel of fs.readdirSync(path.join(BUNDLE_DIR, 'onnx')).map((f) => `onnx/${f}`).concat(['tokenizer.json', 'tokenizer_config.json'])) {
    if (opts.drop?.includes(rel)) continue;
    fs.symlinkSync(path.join(BUNDLE_DIR, rel), path.join(dir, rel));
  }
  const m = JSON.parse(fs.readFileSync(path.join(BUNDLE_DIR, 'model.json'), 'utf8'));
  edit?.(m);
  fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify(m));
  return dir;
}

async function loadError(dir: string, options = {}): Promise<BundleError> {
  try {
    const b = await loadBundle(dir, options);
    await b.release();
  } catch (err) {
    expect(err).toBeInstanceOf(BundleError);
    return err as BundleError;
  }
  throw new Error('bundle loaded, expected a BundleError');
}

afterAll(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('bundle loading', () => {
  test('the golden bundle loads, fp32 by default, on CPU', async () => {
    const b = await loadBundle(BUNDLE_DIR);
    expect(b.dtype).toBe('fp32');
    expect(b.device).toBe('cpu');
    expect(b.decoderNames.pastKey).toEqual(['past_key_values.0.key', 'past_key_values.1.key']);
    await b.release();
  });

  test('device cuda falls back to CPU with a log line when the provider cannot load', async () => {
    const warnings: string[] = [];
    const logger = { info() {}, warn: (_o: object, msg: string) => void warnings.push(msg) };
    const b = await loadBundle(BUNDLE_DIR, { device: 'cuda', deviceId: 0, logger });
    if (b.device === 'cpu') expect(warnings.join('\n')).toMatch(/CUDA.*falling back to CPU/);
    await b.release();
  });

  test('a bundle with one weight variant only (fp16, as the bundled model ships) loads', async () => {
    const dir = bundleCopy(
      (m) => {
        m.dtypes = ['fp16'];
        for (const g of ['vision', 'embed', 'decoder']) delete m[g].files.fp32;
      },
      { drop: ['onnx/vision_encoder.onnx', 'onnx/embed_tokens.onnx', 'onnx/decoder_model_merged.onnx'] },
    );
    const b = await loadBundle(dir);
    expect(b.dtype).toBe('fp16');
    await b.release();
  });

  test('missing ONNX file', async () => {
    const err = await loadError(bundleCopy(undefined, { drop: ['onnx/decoder_model_merged_fp16.onnx'] }));
    expect(err.code).toBe('missing_file');
    expect(err.message).toMatch(/decoder\.files\.fp16.*decoder_model_merged_fp16\.onnx/);
  });

  test('missing tokenizer', async () => {
    const err = await loadError(bundleCopy(undefined, { drop: ['tokenizer.json'] }));
    expect(err.code).toBe('missing_file');
    expect(err.message).toMatch(/tokenizer\.json/);
  });

  test('missing model.json', async () => {
    const err = await loadError(path.join(os.tmpdir(), 'no-such-bundle-dir'));
    expect(err.code).toBe('missing_file');
    expect(err.message).toMatch(/model\.json/);
  });

  test('wrong input name', async () => {
    const err = await loadError(bundleCopy((m) => (m.vision.input = 'pixels')));
    expect(err.code).toBe('graph_mismatch');
    expect(err.message).toMatch(/vision graph has no input "pixels"/);
  });

  test('wrong decoder tensor name', async () => {
    const err = await loadError(bundleCopy((m) => (m.decoder.outputs.present_key = 'present_key_values.{i}.key')));
    expect(err.code).toBe('graph_mismatch');
    expect(err.message).toMatch(/no output "present_key_values\.0\.key"/);
  });

  test('layer count mismatch (fewer layers declared)', async () => {
    const err = await loadError(bundleCopy((m) => (m.decoder.num_layers = 1)));
    expect(err.code).toBe('graph_mismatch');
    expect(err.message).toMatch(/graph has 2 layers, model.json says num_layers=1/);
  });

  test('layer count mismatch (more layers declared)', async () => {
    const err = await loadError(bundleCopy((m) => (m.decoder.num_layers = 3)));
    expect(err.message).toMatch(/no input "past_key_values\.2\.key"/);
  });

  test('shape mismatch: vocabulary size', async () => {
    const err = await loadError(bundleCopy((m) => (m.decoder.vocab_size = 32001)));
    expect(err.code).toBe('graph_mismatch');
    expect(err.message).toMatch(/logits" dim 2 is 32000, expected 32001/);
  });

  test('bad manifest: wrong format version, missing fields', async () => {
    const err = await loadError(
      bundleCopy((m) => {
        m.format_version = 2;
        delete m.templates.v1_sq;
        m.image.resample = 'lanczos';
      }),
    );
    expect(err.code).toBe('bad_manifest');
    expect(err.message).toMatch(/format_version/);
    expect(err.message).toMatch(/templates\.v1_sq/);
    expect(err.message).toMatch(/image\.resample/);
  });

  test('bad manifest: not JSON', async () => {
    const dir = bundleCopy();
    fs.writeFileSync(path.join(dir, 'model.json'), '{ "format": ');
    const err = await loadError(dir);
    expect(err.code).toBe('bad_manifest');
    expect(err.message).toMatch(/not valid JSON/);
  });

  test('bad manifest: file path escaping the bundle', async () => {
    const err = await loadError(bundleCopy((m) => (m.embed.files.fp32 = '../../etc/passwd')));
    expect(err.code).toBe('bad_manifest');
    expect(err.message).toMatch(/outside the bundle/);
  });

  test('dtype listed without files, and an unknown dtype requested', async () => {
    const err = await loadError(bundleCopy((m) => delete m.vision.files.fp16));
    expect(err.message).toMatch(/vision\.files\.fp16/);
    const m = await readManifest(BUNDLE_DIR);
    expect(m.dtypes).toEqual(['fp32', 'fp16']);
    const bad = await loadError(bundleCopy((x) => (x.dtypes = ['fp32'])), { dtype: 'fp16' });
    expect(bad.code).toBe('bad_dtype');
  });

  test('Engine.load refuses special-token ids the tokenizer does not have', async () => {
    await expect(Engine.load(bundleCopy((m) => (m.tokenizer.eos_token_id = 99999999)))).rejects.toThrow(/eos_token_id=99999999/);
  });
});
