/**
 * Loads a model bundle: validates `model.json`, checks that every file it names exists, opens the
 * three ONNX sessions of the chosen dtype and checks the graphs' inputs and outputs against the
 * manifest. Anything inconsistent is refused here, at load time, with a `BundleError` that names
 * the problem — never at the first user request.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';

import { BundleError } from './errors';
import { describeIssues, Dtype, layerTensorName, Manifest, ManifestSchema } from './manifest';

/** Minimal logger surface (pino-compatible) so the engine does not depend on a logging library. */
export interface EngineLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export const silentLogger: EngineLogger = { info() {}, warn() {} };

export type ExecutionDevice = 'cpu' | 'cuda';

export interface BundleOptions {
  /** Weight variant; default: the manifest's first `dtypes` entry. */
  dtype?: Dtype;
  /** `cuda` tries the CUDA execution provider and falls back to CPU if it cannot load. */
  device?: ExecutionDevice;
  /** GPU index for the CUDA provider (one worker per GPU: the worker index). */
  deviceId?: number;
  /** ORT intra-op threads per session; workers × this should not exceed physical cores. */
  intraOpNumThreads?: number;
  interOpNumThreads?: number;
  /** Extra ORT session config entries (string values), e.g. `session.intra_op.allow_spinning`. */
  sessionConfig?: Record<string, string>;
  logger?: EngineLogger;
}

/** Resolved tensor names of the decoder graph, per layer. */
export interface DecoderNames {
  embeds: string;
  attentionMask: string;
  positionIds: string;
  pastKey: string[];
  pastValue: string[];
  logits: string;
  presentKey: string[];
  presentValue: string[];
}

export interface ModelBundle {
  dir: string;
  manifest: Manifest;
  dtype: Dtype;
  /** The provider the sessions actually run on (after any CUDA → CPU fallback). */
  device: ExecutionDevice;
  sessions: { vision: ort.InferenceSession; embed: ort.InferenceSession; decoder: ort.InferenceSession };
  decoderNames: DecoderNames;
  tokenizerPath: string;
  release(): Promise<void>;
}

/** Reads and validates `model.json`; does not touch the ONNX files. */
export async function readManifest(dir: string): Promise<Manifest> {
  const file = path.join(dir, 'model.json');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new BundleError('missing_file', `model bundle ${dir}: cannot read model.json (${(err as Error).message})`, {
      cause: err,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new BundleError('bad_manifest', `model bundle ${dir}: model.json is not valid JSON (${(err as Error).message})`);
  }
  const parsed = ManifestSchema.safeParse(json);
  if (!parsed.success) {
    throw new BundleError('bad_manifest', `model bundle ${dir}: invalid model.json: ${describeIssues(parsed.error)}`);
  }
  return parsed.data;
}

export function decoderNames(m: Manifest): DecoderNames {
  const d = m.decoder;
  const layers = Array.from({ length: d.num_layers }, (_, i) => i);
  return {
    embeds: d.inputs.embeds,
    attentionMask: d.inputs.attention_mask,
    positionIds: d.inputs.position_ids,
    pastKey: layers.map((i) => layerTensorName(d.inputs.past_key, i)),
    pastValue: layers.map((i) => layerTensorName(d.inputs.past_value, i)),
    logits: d.outputs.logits,
    presentKey: layers.map((i) => layerTensorName(d.outputs.present_key, i)),
    presentValue: layers.map((i) => layerTensorName(d.outputs.present_value, i)),
  };
}

/** Resolves a bundle-relative path, refusing names that escape the bundle folder. */
function bundlePath(dir: string, rel: string, field: string): string {
  const abs = path.resolve(dir, rel);
  const root = path.resolve(dir) + path.sep;
  if (!abs.startsWith(root)) {
    throw new BundleError('bad_manifest', `model bundle ${dir}: ${field} "${rel}" points outside the bundle`);
  }
  return abs;
}

async function requireFile(dir: string, rel: string, field: string): Promise<string> {
  const abs = bundlePath(dir, rel, field);
  try {
    const st = await fs.stat(abs);
    if (!st.isFile()) throw new Error('not a regular file');
  } catch (err) {
    throw new BundleError('missing_file', `model bundle ${dir}: ${field} names "${rel}", which is missing (${(err as Error).message})`);
  }
  return abs;
}

function sessionOptions(opts: BundleOptions, providers: ort.InferenceSession.ExecutionProviderConfig[]): ort.InferenceSession.SessionOptions {
  const o: ort.InferenceSession.SessionOptions = {
    executionProviders: providers,
    graphOptimizationLevel: 'all',
  };
  if (opts.intraOpNumThreads !== undefined) o.intraOpNumThreads = opts.intraOpNumThreads;
  if (opts.interOpNumThreads !== undefined) o.interOpNumThreads = opts.interOpNumThreads;
  if (opts.sessionConfig) o.extra = { session: { ...opts.sessionConfig } };
  return o;
}

async function openSession(file: string, rel: string, options: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(file, options);
  } catch (err) {
    throw new BundleError('session_failed', `cannot open ONNX graph ${rel}: ${(err as Error).message}`, { cause: err });
  }
}

type Meta = ort.InferenceSession.ValueMetadata;

function metaOf(list: readonly Meta[], name: string): Meta | undefined {
  return list.find((m) => m.name === name);
}

/**
 * Checks a tensor's declared element type and the numeric dims the graph fixes. Symbolic dims
 * (strings) and missing metadata are accepted: only contradictions are errors.
 */
function checkTensor(
  graph: string,
  kind: 'input' | 'output',
  meta: Meta | undefined,
  name: string,
  type: ort.Tensor.Type,
  dims: (number | null)[],
  problems: string[],
): void {
  if (!meta) {
    problems.push(`${graph} graph has no ${kind} "${name}"`);
    return;
  }
  if (!meta.isTensor) {
    problems.push(`${graph} ${kind} "${name}" is not a tensor`);
    return;
  }
  if (meta.type && meta.type !== type) {
    problems.push(`${graph} ${kind} "${name}" is ${meta.type}, expected ${type}`);
  }
  const shape = meta.shape ?? [];
  if (shape.length === 0) return; // shape unknown to ORT
  if (shape.length !== dims.length) {
    problems.push(`${graph} ${kind} "${name}" has rank ${shape.length}, expected ${dims.length}`);
    return;
  }
  dims.forEach((want, axis) => {
    const got = shape[axis];
    if (want !== null && typeof got === 'number' && got >= 0 && got !== want) {
      problems.push(`${graph} ${kind} "${name}" dim ${axis} is ${got}, expected ${want}`);
    }
  });
}

/** Compares the three sessions with the manifest; returns every problem found. */
export function checkGraphs(m: Manifest, s: ModelBundle['sessions'], names: DecoderNames): string[] {
  const problems: string[] = [];
  const d = m.decoder;
  const H = d.hidden_size;

  // vision: pixel_values [B,3,S,S] -> image_features [B,N,H]
  checkTensor('vision', 'input', metaOf(s.vision.inputMetadata, m.vision.input), m.vision.input, 'float32',
    [null, 3, m.image.size, m.image.size], problems);
  checkTensor('vision', 'output', metaOf(s.vision.outputMetadata, m.vision.output), m.vision.output, 'float32',
    [null, m.image.num_tokens, H], problems);
  extraInputs('vision', s.vision.inputNames, [m.vision.input], problems);

  // embed: input_ids [B,T] int64 -> inputs_embeds [B,T,H]
  checkTensor('embed', 'input', metaOf(s.embed.inputMetadata, m.embed.input), m.embed.input, 'int64', [null, null], problems);
  checkTensor('embed', 'output', metaOf(s.embed.outputMetadata, m.embed.output), m.embed.output, 'float32', [null, null, H], problems);
  extraInputs('embed', s.embed.inputNames, [m.embed.input], problems);

  // decoder
  const inMeta = s.decoder.inputMetadata;
  const outMeta = s.decoder.outputMetadata;
  checkTensor('decoder', 'input', metaOf(inMeta, names.embeds), names.embeds, 'float32', [null, null, H], problems);
  checkTensor('decoder', 'input', metaOf(inMeta, names.attentionMask), names.attentionMask, 'int64', [null, null], problems);
  checkTensor('decoder', 'input', metaOf(inMeta, names.positionIds), names.positionIds, 'int64', [null, null], problems);
  checkTensor('decoder', 'output', metaOf(outMeta, names.logits), names.logits, 'float32', [null, null, d.vocab_size], problems);
  const kv = [null, d.num_kv_heads, null, d.head_dim];
  for (let i = 0; i < d.num_layers; i++) {
    checkTensor('decoder', 'input', metaOf(inMeta, names.pastKey[i]), names.pastKey[i], 'float32', kv, problems);
    checkTensor('decoder', 'input', metaOf(inMeta, names.pastValue[i]), names.pastValue[i], 'float32', kv, problems);
    checkTensor('decoder', 'output', metaOf(outMeta, names.presentKey[i]), names.presentKey[i], 'float32', kv, problems);
    checkTensor('decoder', 'output', metaOf(outMeta, names.presentValue[i]), names.presentValue[i], 'float32', kv, problems);
  }
  const expected = [names.embeds, names.attentionMask, names.positionIds, ...names.pastKey, ...names.pastValue];
  const extra = s.decoder.inputNames.filter((n) => !expected.includes(n));
  if (extra.length) {
    // Most often a layer-count mismatch: the graph has more past_key_values.* than num_layers says.
    const layerCount = s.decoder.inputNames.filter((n) => matchesLayerPattern(d.inputs.past_key, n)).length;
    const hint = layerCount !== d.num_layers ? ` (the graph has ${layerCount} layers, model.json says num_layers=${d.num_layers})` : '';
    problems.push(`decoder graph has inputs model.json does not describe: ${extra.join(', ')}${hint}`);
  }
  return problems;
}

function matchesLayerPattern(pattern: string, name: string): boolean {
  const [pre, post] = pattern.split('{i}');
  return name.startsWith(pre) && name.endsWith(post ?? '') && /^\d+$/.test(name.slice(pre.length, name.length - (post ?? '').length));
}

function extraInputs(graph: string, inputNames: readonly string[], expected: string[], problems: string[]): void {
  const extra = inputNames.filter((n) => !expected.includes(n));
  if (extra.length) problems.push(`${graph} graph has unexpected inputs: ${extra.join(', ')}`);
}

/**
 * Opens a bundle. `device: 'cuda'` appends the CUDA provider; if it cannot load (no GPU
 * package, wrong CUDA version) the error is caught, logged once, and the sessions run on CPU.
 */
export async function loadBundle(dir: string, opts: BundleOptions = {}): Promise<ModelBundle> {
  const log = opts.logger ?? silentLogger;
  const manifest = await readManifest(dir);
  const dtype = opts.dtype ?? manifest.dtypes[0];
  if (!manifest.dtypes.includes(dtype)) {
    throw new BundleError('bad_dtype', `model bundle ${dir}: dtype "${dtype}" requested, bundle has ${manifest.dtypes.join(', ')}`);
  }

  // Every file of every advertised dtype must be there: a half-copied bundle is refused even if
  // the chosen dtype happens to be complete.
  const files: Record<'vision' | 'embed' | 'decoder', string> = { vision: '', embed: '', decoder: '' };
  for (const graph of ['vision', 'embed', 'decoder'] as const) {
    for (const dt of manifest.dtypes) {
      const rel = manifest[graph].files[dt]!;
      const abs = await requireFile(dir, rel, `${graph}.files.${dt}`);
      if (dt === dtype) files[graph] = abs;
    }
  }
  const tokenizerPath = await requireFile(dir, manifest.tokenizer.file, 'tokenizer.file');

  let device: ExecutionDevice = opts.device ?? 'cpu';
  const providersFor = (dev: ExecutionDevice): ort.InferenceSession.ExecutionProviderConfig[] =>
    dev === 'cuda' ? [{ name: 'cuda', deviceId: opts.deviceId ?? 0 }, 'cpu'] : ['cpu'];

  const open = async (graph: 'vision' | 'embed' | 'decoder'): Promise<ort.InferenceSession> => {
    const rel = manifest[graph].files[dtype]!;
    if (device === 'cuda') {
      try {
        return await ort.InferenceSession.create(files[graph], sessionOptions(opts, providersFor('cuda')));
      } catch (err) {
        log.warn(
          { err: (err as Error).message, deviceId: opts.deviceId ?? 0, graph: rel },
          'CUDA execution provider unavailable; falling back to CPU',
        );
        device = 'cpu';
      }
    }
    return openSession(files[graph], rel, sessionOptions(opts, providersFor('cpu')));
  };

  const opened: ort.InferenceSession[] = [];
  const releaseAll = async () => {
    await Promise.all(opened.map((s) => s.release().catch(() => undefined)));
  };
  try {
    const vision = await open('vision');
    opened.push(vision);
    const embed = await open('embed');
    opened.push(embed);
    const decoder = await open('decoder');
    opened.push(decoder);
    const sessions = { vision, embed, decoder };
    const names = decoderNames(manifest);
    const problems = checkGraphs(manifest, sessions, names);
    if (problems.length) {
      throw new BundleError('graph_mismatch', `model bundle ${dir} (${dtype}): ${problems.join('; ')}`);
    }
    log.info({ bundle: dir, name: manifest.name, dtype, device }, 'model bundle loaded');
    return {
      dir,
      manifest,
      dtype,
      device,
      sessions,
      decoderNames: names,
      tokenizerPath,
      release: releaseAll,
    };
  } catch (err) {
    await releaseAll();
    throw err;
  }
}
