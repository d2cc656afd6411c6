// Runs ONNX graphs with onnxruntime-node for the Python exporter's self-check (training/export.py).
//
//   node training/scripts/ort_run.mjs spec.json
//
// spec.json: { "jobs": [ { "model": "path.onnx", "out_dir": "dir",
//                          "inputs": { "<name>": { "dtype": "float32"|"int64", "shape": [..], "file": "raw.bin" } } } ] }
// Input files are raw little-endian C-order arrays. For every job each output is written to
// out_dir/<index>.bin (float32/int64 raw) and out_dir/outputs.json lists
// { "<name>": { "dtype", "shape", "file" } }. One process serves all jobs; a session is created
// once per model path. Exits non-zero with the error message on any failure.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const ort = require('onnxruntime-node');

const ARRAYS = {
  float32: Float32Array,
  int64: BigInt64Array,
  int32: Int32Array,
  bool: Uint8Array,
  float16: Uint16Array,
};

function readTensor(desc, baseDir) {
  const Ctor = ARRAYS[desc.dtype];
  if (!Ctor) throw new Error(`unsupported input dtype ${desc.dtype}`);
  const buf = fs.readFileSync(path.resolve(baseDir, desc.file));
  const count = desc.shape.reduce((a, b) => a * b, 1);
  if (buf.byteLength !== count * Ctor.BYTES_PER_ELEMENT) {
    throw new Error(`${desc.file}: ${buf.byteLength} bytes for shape [${desc.shape}] ${desc.dtype}`);
  }
  const data = new Ctor(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  return new ort.Tensor(desc.dtype, data, desc.shape);
}

async function main() {
  const specPath = process.argv[2];
  if (!specPath) throw new Error('usage: node ort_run.mjs spec.json');
  const baseDir = path.dirname(path.resolve(specPath));
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  const sessions = new Map();
  for (const job of spec.jobs) {
    const model = path.resolve(baseDir, job.model);
    let session = sessions.get(model);
    if (!session) {
      session = await ort.InferenceSession.create(model, {
        executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
      });
      sessions.set(model, session);
    }
    const feeds = {};
    for (const [name, desc] of Object.entries(job.inputs)) feeds[name] = readTensor(desc, baseDir);
    const results = await session.run(feeds);
    const outDir = path.resolve(baseDir, job.out_dir);
    fs.mkdirSync(outDir, { recursive: true });
    const index = {};
    session.outputNames.forEach((name, i) => {
      const t = results[name];
      const file = `${i}.bin`;
      const data = t.data;
      fs.writeFileSync(path.join(outDir, file), Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      index[name] = { dtype: t.type, shape: t.dims.map(Number), file };
    });
    fs.writeFileSync(path.join(outDir, 'outputs.json'), JSON.stringify(index));
  }
  for (const s of sessions.values()) await s.release();
}

main().catch((err) => {
  process.stderr.write(`ort_run: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
