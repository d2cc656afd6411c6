/** Shared fixtures of the model tests: the golden files written by `python -m training.golden`. */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const GOLDEN_DIR = path.resolve(__dirname, '../fixtures/golden');
export const BUNDLE_DIR = path.join(GOLDEN_DIR, 'bundle');

export interface TensorRecord {
  shape: number[];
  sum: number;
  abs_sum: number;
  values: number[];
}

export interface GoldenPrompt {
  name: string;
  template: 'v1' | 'v1_sq';
  text: string;
  chunks: number[][];
  input_ids: number[];
  sequence_length: number;
  first_step: {
    top_ids: number[];
    top_values: number[];
    argmax: number;
    sum: number;
    l2: number;
    mean: number;
    sample_ids: number[];
    sample_values: number[];
  };
  greedy: { new_tokens: number[]; top_logit: number[]; margin: number[]; fp16_new_tokens: number[]; text: string };
}

export interface Golden {
  image: { file: string; width: number; height: number; pad_color: number[]; pixel_values: TensorRecord; image_features: TensorRecord };
  prompts: GoldenPrompt[];
  greedy_settings: { max_new_tokens: number; eos_token_id: number };
  tokenizer_cases: { text: string; ids: number[]; tokens: string[] }[];
}

export function loadGolden(): Golden {
  return JSON.parse(fs.readFileSync(path.join(GOLDEN_DIR, 'golden.json'), 'utf8')) as Golden;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
