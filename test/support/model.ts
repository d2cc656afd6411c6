/** The bundled model (models/sq-llava-micro): what the end-to-end tests talk to. */
import path from 'node:path';
import { loadConfig, type Config } from '../../src/config';

export const BUNDLED_MODEL = path.resolve(__dirname, '../../models/sq-llava-micro');

type Tree = Record<string, unknown>;

/**
 * The default configuration on the bundled model with one worker thread (the suites share two
 * busy cores), plus a test's own overrides (limits, queue size...).
 */
export function bundledModelConfig(overrides: { inference?: Tree } & Tree = {}): Config {
  return loadConfig({
    env: {},
    overrides: { ...overrides, model: { dir: BUNDLED_MODEL }, inference: { workers: 1, intra_op_threads: 1, ...overrides.inference } },
  });
}
