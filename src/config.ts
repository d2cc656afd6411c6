/**
 * Configuration: config/default.yaml, then an optional local file (CURIO_CONFIG), then
 * environment variables (CURIO_SECTION__KEY=value, plus the conventional REDIS_URL), validated
 * once at start with zod. A bad value stops Curio with one line naming the key and what was
 * expected. Secrets never live here: platform tokens are read from the environment by the
 * adapters that need them, so printing the config can never leak one.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';

const idList = z.object({ allow: z.array(z.coerce.string()).default([]), deny: z.array(z.coerce.string()).default([]) }).strict();
const bucket = z.object({ capacity: z.number().int().positive(), per_minute: z.number().positive() }).strict();

export const ConfigSchema = z
  .object({
    model: z
      .object({
        dir: z.string().min(1),
        dtype: z.enum(['', 'fp32', 'fp16']),
        device: z.enum(['cpu', 'cuda']),
        gpus: z.number().int().positive(),
      })
      .strict(),
    inference: z
      .object({
        mode: z.enum(['local', 'remote']),
        workers: z.number().int().min(0),
        intra_op_threads: z.number().int().min(0),
        max_batch: z.number().int().positive(),
        max_queue: z.number().int().min(0),
        job_timeout_s: z.number().positive(),
        embedding_cache_mb: z.number().min(0),
        conversation_cache_mb: z.number().min(0),
      })
      .strict(),
    worker: z
      .object({
        host_id: z.string().regex(/^[^/:\s]*$/, 'no "/", ":" or spaces'),
        lock_s: z.number().positive(),
        stalled_check_s: z.number().positive(),
        heartbeat_s: z.number().positive(),
      })
      .strict(),
    redis: z.object({ url: z.string(), prefix: z.string().min(1) }).strict(),
    conversations: z.object({ idle_ttl_minutes: z.number().positive(), open_to_all: z.boolean() }).strict(),
    limits: z
      .object({
        per_user: bucket,
        per_channel: bucket,
        max_text_chars: z.number().int().positive(),
        max_quiz_questions: z.number().int().min(1).max(10),
        max_image_mb: z.number().positive(),
        max_image_megapixels: z.number().positive(),
        download_timeout_s: z.number().positive(),
      })
      .strict(),
    access: z.object({ users: idList, roles: idList, channels: idList, servers: idList }).strict(),
    playground: z
      .object({
        enabled: z.union([z.boolean(), z.literal('auto')]),
        host: z.string(),
        port: z.number().int().min(0).max(65535),
      })
      .strict(),
    http: z.object({ host: z.string(), port: z.number().int().min(0).max(65535) }).strict(),
    log: z.object({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error']) }).strict(),
  })
  .strict();

export type Config = z.infer<typeof ConfigSchema>;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export const PROJECT_ROOT = path.resolve(__dirname, '..');
const DEFAULT_FILE = path.join(PROJECT_ROOT, 'config', 'default.yaml');

type Tree = Record<string, unknown>;

function readYaml(file: string): Tree {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    return (YAML.parse(text) ?? {}) as Tree;
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
}

function merge(base: Tree, over: Tree, at = ''): Tree {
  const out: Tree = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = base[k];
    if (v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b)) {
      out[k] = merge(b as Tree, v as Tree, `${at}${k}.`);
    } else out[k] = v;
  }
  return out;
}

/** A YAML scalar from an environment string: numbers, booleans and lists parse as in the file. */
function envValue(raw: string): unknown {
  try {
    return YAML.parse(raw);
  } catch {
    return raw;
  }
}

function envOverrides(env: NodeJS.ProcessEnv): Tree {
  const tree: Tree = {};
  const set = (keys: string[], value: unknown) => {
    let node = tree;
    keys.slice(0, -1).forEach((k) => {
      node[k] = (node[k] as Tree) ?? {};
      node = node[k] as Tree;
    });
    node[keys[keys.length - 1]] = value;
  };
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('CURIO_') || name === 'CURIO_CONFIG' || raw === undefined) continue;
    const keys = name.slice('CURIO_'.length).toLowerCase().split('__');
    if (keys.length < 2) continue;
    // Strings stay strings where the schema wants text (paths, URLs); YAML parsing happens only for the rest.
    set(keys, keys[keys.length - 1] === 'dir' || keys[keys.length - 1] === 'url' || keys[keys.length - 1] === 'host' ? raw : envValue(raw));
  }
  if (env.REDIS_URL) set(['redis', 'url'], env.REDIS_URL);
  return tree;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = issue.path.join('.');
  if (issue.code === 'unrecognized_keys') {
    const where = key ? `${key}.` : '';
    return `unknown setting ${issue.keys.map((k) => where + k).join(', ')}`;
  }
  return `${key}: ${issue.message}`;
}

export interface LoadConfigOptions {
  env?: NodeJS.ProcessEnv;
  /** Extra overrides (CLI flags), applied last. */
  overrides?: Tree;
}

export function loadConfig(options: LoadConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  let tree = readYaml(DEFAULT_FILE);
  if (env.CURIO_CONFIG) tree = merge(tree, readYaml(path.resolve(env.CURIO_CONFIG)));
  tree = merge(tree, envOverrides(env));
  if (options.overrides) tree = merge(tree, options.overrides);
  const parsed = ConfigSchema.safeParse(tree);
  if (!parsed.success) {
    throw new ConfigError(`invalid configuration: ${parsed.error.issues.map(describeIssue).join('; ')}`);
  }
  const config = parsed.data;
  if (config.inference.mode === 'remote' && !config.redis.url) {
    throw new ConfigError('invalid configuration: inference.mode remote needs redis.url (or REDIS_URL)');
  }
  config.model.dir = path.resolve(PROJECT_ROOT, config.model.dir);
  return config;
}
