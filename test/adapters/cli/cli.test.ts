import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';

/**
 * The `curio` command as a user runs it (a child process through bin/curio.js), on the golden
 * test bundle: answers stream to stdout, failures are one line on stderr with exit 1 or 2.
 */
const ROOT = path.resolve(__dirname, '../../..');
const BUNDLE = path.join(ROOT, 'test/fixtures/golden/bundle');
const dir = mkdtempSync(path.join(tmpdir(), 'curio-cli-'));
const image = path.join(dir, 'scene.png');
const notImage = path.join(dir, 'notes.txt');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function curio(args: string[], input?: string, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin/curio.js'), ...args], {
      cwd: ROOT,
      env: { ...process.env, CURIO_MODEL__DIR: BUNDLE, CURIO_INFERENCE__INTRA_OP_THREADS: '1', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    if (input !== undefined) child.stdin.end(input);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="160" height="100"><rect width="160" height="100" fill="white"/><circle cx="40" cy="50" r="25" fill="red"/></svg>`;
  await sharp(Buffer.from(svg)).png().toFile(image);
  writeFileSync(notImage, 'hello, not a picture');
});

describe('curio CLI', () => {
  it('describes an image, streaming the answer to stdout', async () => {
    const r = await curio(['describe', image]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().length).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/^Loaded sq-llava-tiny-golden in \d+\.\d s\n$/);
  });

  it('--json prints one object with the answer and stats; greedy answers repeat exactly', async () => {
    const a = await curio(['--json', 'ask', image, 'What color is the circle?']);
    const b = await curio(['--json', 'ask', image, 'What color is the circle?']);
    expect(a.code).toBe(0);
    const ja = JSON.parse(a.stdout);
    expect(ja).toMatchObject({ kind: 'answer', stats: { cached: false } });
    expect(typeof ja.text).toBe('string');
    expect(JSON.parse(b.stdout).text).toBe(ja.text);
    expect(a.stderr).toBe('');
  });

  it('quiz prints the description then numbered questions and answers; --seed reproduces it', async () => {
    // (The golden test model's 256-position context holds one round.)
    const a = await curio(['--json', '--seed', '7', 'quiz', image, '--rounds', '1']);
    const b = await curio(['--json', '--seed', '7', 'quiz', image, '--rounds', '1']);
    const ja = JSON.parse(a.stdout);
    expect(ja.kind).toBe('quiz');
    expect(ja.rounds).toHaveLength(1);
    expect(JSON.parse(b.stdout)).toEqual({ ...ja, stats: expect.anything() });
    const plain = await curio(['--seed', '7', 'quiz', image, '--rounds', '1']);
    expect(plain.stdout).toMatch(/\n\nQ1: .*\nA1: /s);
  });

  it('chat answers follow-ups read from stdin until an empty line', async () => {
    const r = await curio(['chat', image], 'What is it?\nAnd the color?\n\n');
    expect(r.code).toBe(0);
    expect(r.stderr.match(/> /g)).toHaveLength(3); // two follow-ups, then the empty line ends it
    // The description and the first follow-up are answered; the golden model's 256-position
    // context is full by the second, which gets the clear "too long" line instead.
    expect(r.stdout.trim().split('\n').filter(Boolean)).toHaveLength(2);
    expect(r.stderr).toContain('This conversation is too long for the model; please start a new one.');
  });

  it.each([
    [['describe', notImage], 1, /^curio: That file is not an image I can read \(use JPEG, PNG, WebP or GIF\)\.\n$/],
    [['describe', path.join(dir, 'missing.png')], 2, /^curio: No such file: .*missing\.png\n$/],
    [['ask', image, '   '], 1, /^curio: Please write a question\.\n$/],
    [['quiz', image, '--rounds', '9'], 2, /--rounds must be an integer from 1 to 5/],
    [['describe', image, '--bogus'], 2, /unknown option '--bogus'/],
    [['--model', '/nonexistent', 'describe', image], 2, /^curio: the model could not be loaded: model bundle \/nonexistent: cannot read model\.json/],
  ])('%j fails with one clear line and exit %i', async (args, code, stderr) => {
    const r = await curio(args);
    expect(r.code).toBe(code);
    expect(r.stderr.replace(/^Loaded .*\n/, '')).toMatch(stderr);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });
});

describe('curio start (what npm start runs)', () => {
  it('serves the playground, and exits cleanly on SIGTERM', async () => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin/curio.js'), 'start'], {
      cwd: ROOT,
      env: { ...process.env, CURIO_MODEL__DIR: BUNDLE, CURIO_INFERENCE__INTRA_OP_THREADS: '1', CURIO_PLAYGROUND__PORT: '0', CURIO_HTTP__PORT: '0', CURIO_LOG__LEVEL: 'warn' },
    });
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        const m = /Curio playground: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stderr);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    const page = await fetch(url);
    expect(page.status).toBe(200);
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
