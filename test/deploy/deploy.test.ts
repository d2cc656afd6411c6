import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { loadConfig } from '../../src/config';
import { buildProgram } from '../../src/adapters/cli/main';

/**
 * The deployment files cannot be run here (no Docker engine, no cluster), so they are checked
 * against what they refer to: every CURIO_* variable and config file they set must pass the
 * real config schema, every command they run must be a real `curio` subcommand, every path
 * they COPY must exist, and the Dockerfiles must pass dockerfilelint.
 */
const ROOT = path.resolve(__dirname, '../..');
const read = (p: string) => readFileSync(path.join(ROOT, p), 'utf8');
const compose = YAML.parse(read('deploy/compose.yaml'));
const k8s = YAML.parseAllDocuments(read('deploy/k8s/curio.yaml')).map((d) => d.toJS());
const dockerfiles = ['deploy/Dockerfile', 'deploy/Dockerfile.cuda'];
const subcommands = buildProgram().commands.map((c) => c.name());

function curioEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  // Compose interpolation `${VAR:-default}` → the default, as compose would with VAR unset.
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (k.startsWith('CURIO_') || k === 'REDIS_URL') out[k] = String(v).replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1');
  return out;
}

describe('deploy/compose.yaml', () => {
  it.each(Object.entries(compose.services as Record<string, { command?: string[]; environment?: Record<string, string> }>))(
    'service %s uses valid settings and a real curio command',
    (name, svc) => {
      if (name === 'redis') return;
      expect(subcommands).toContain(svc.command![0]);
      expect(() => loadConfig({ env: curioEnv(svc.environment ?? {}) })).not.toThrow();
    },
  );

  it('runs bots as enqueue-only and workers on the GPU', () => {
    expect(compose.services.bot.environment.CURIO_INFERENCE__MODE).toBe('remote');
    expect(loadConfig({ env: curioEnv(compose.services.worker.environment) }).model.device).toBe('cuda');
  });
});

describe('deploy/k8s/curio.yaml', () => {
  const byKind = (kind: string) => k8s.filter((d) => d.kind === kind);

  it('its ConfigMap is a valid Curio config file', () => {
    const cm = byKind('ConfigMap').find((d) => d.metadata.name === 'curio-config');
    const file = path.join(require('node:os').tmpdir(), `curio-k8s-${process.pid}.yaml`);
    require('node:fs').writeFileSync(file, cm.data['curio.yaml']);
    const c = loadConfig({ env: { CURIO_CONFIG: file } });
    expect(c.inference.mode).toBe('remote');
    expect(c.redis.url).toMatch(/^redis:\/\/curio-redis:6379/);
  });

  it('runs real curio commands with valid env, as non-root, with GPU requests on workers', () => {
    const deployments = byKind('Deployment').filter((d) => d.metadata.name !== 'curio-redis');
    expect(deployments.map((d) => d.metadata.name).sort()).toEqual(['curio-bot', 'curio-worker']);
    for (const d of deployments) {
      const spec = d.spec.template.spec;
      expect(spec.securityContext.runAsNonRoot).toBe(true);
      const c = spec.containers[0];
      expect(subcommands).toContain(c.args[0]);
      const env = Object.fromEntries((c.env ?? []).map((e: { name: string; value: string }) => [e.name, e.value]));
      delete env.CURIO_CONFIG; // checked above
      expect(() => loadConfig({ env: curioEnv(env) })).not.toThrow();
      expect(c.readinessProbe.httpGet.path).toBe('/readyz');
      expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    }
    const worker = deployments.find((d) => d.metadata.name === 'curio-worker')!;
    expect(worker.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']).toBe(1);
  });
});

describe.each(dockerfiles)('%s', (file) => {
  const text = read(file);

  it('copies only paths that exist and runs as a non-root user', () => {
    for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const src of m[1].split(/\s+/)) expect(existsSync(path.join(ROOT, src))).toBe(true);
    }
    expect(text).toMatch(/^USER (?!root)\S+$/m);
  });

  it('starts a real curio command', () => {
    const cmd = JSON.parse(text.match(/^CMD (\[.*\])$/m)![1]) as string[];
    expect(subcommands).toContain(cmd[0]);
  });

  it('passes dockerfilelint', () => {
    const out = execFileSync(path.join(ROOT, 'node_modules/.bin/dockerfilelint'), [path.join(ROOT, file)], { encoding: 'utf8' });
    expect(out).toContain('Issues: None found');
  });
});
