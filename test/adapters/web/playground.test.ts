/**
 * The local playground in a real browser: Debian's Chromium, headless, driven by
 * playwright-core, against the playground server on loopback with Curio's app built by
 * createApp and the bundled model (models/sq-llava-micro) answering for real.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { createApp, type App } from '../../../src/app';
import { PROJECT_ROOT } from '../../../src/config';
import { startPlayground, startPlaygroundServer, type Playground } from '../../../src/adapters/web';
import { bundledModelConfig } from '../../support/model';
import type { Commands, ReplyEvent } from '../../../src/core/commands';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(PROJECT_ROOT, 'test-artifacts');

const LAUNCH_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A shapes-world scene: white background, a big red circle. */
async function redCircle(): Promise<Buffer> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256">
    <rect width="256" height="256" fill="white"/><circle cx="128" cy="128" r="90" fill="#e02020"/></svg>`;
  return sharp(Buffer.from(svg)).png().toBuffer();
}

let app: App;
let playground: Playground;
let context: BrowserContext;
let page: Page;
let profile: string;

async function launch(): Promise<BrowserContext> {
  profile = mkdtempSync(path.join(os.tmpdir(), 'curio-chromium-'));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: LAUNCH_ARGS,
    viewport: { width: 1000, height: 900 },
  });
}

/** Sends a line through the text box, as a user would. */
async function type(p: Page, text: string): Promise<void> {
  await p.fill('#input', text);
  await p.press('#input', 'Enter');
}

/** Waits for the n-th bot reply (1-based) to finish (done or error); returns its locator. */
async function reply(p: Page, n: number, timeout = 60_000) {
  const bubble = p.locator('.msg.bot').nth(n - 1);
  await bubble.and(p.locator('[data-state="done"], [data-state="error"]')).waitFor({ timeout });
  return bubble;
}

beforeAll(async () => {
  const config = bundledModelConfig({
    limits: { per_user: { capacity: 100, per_minute: 100 }, per_channel: { capacity: 100, per_minute: 100 } },
  });
  app = await createApp(config, { log: 'silent' });
  playground = await startPlayground(app, { host: '127.0.0.1', port: 0 });
  context = await launch();
  page = context.pages()[0] ?? (await context.newPage());
  await page.goto(playground.url);
}, 120_000);

afterAll(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await playground?.stop();
  await app?.close();
});

describe('playground in Chromium', () => {
  it('shows the model and the commands', async () => {
    await page.locator('#model').filter({ hasText: /\S/ }).waitFor({ timeout: 10_000 });
    expect(await page.textContent('#model')).toBe(app.modelName);
    expect(await page.textContent('.intro')).toContain('/describe');
  });

  it('/describe on an uploaded image streams the answer in, then shows stats', async () => {
    await page.setInputFiles('#file', { name: 'red-circle.png', mimeType: 'image/png', buffer: await redCircle() });
    await page.locator('#attachment:not([hidden])').waitFor();
    expect(await page.textContent('#file-name')).toContain('red-circle.png');
    // Record every text the answer shows (each render replaces the text node: keep them all).
    // (Browser-side code is passed as text: this project's TypeScript has no DOM types.)
    await page.evaluate(`
      window.__states = [];
      new MutationObserver((records) => {
        for (const r of records) {
          if (!(r.target instanceof Element) || !r.target.matches('.msg.bot > .answer')) continue;
          r.addedNodes.forEach((n) => window.__states.push(n.textContent || ''));
        }
      }).observe(document.getElementById('log'), { childList: true, subtree: true });
    `);
    await type(page, '/describe');
    const bubble = await reply(page, 1);
    expect(await bubble.getAttribute('data-state')).toBe('done');
    const answer = (await bubble.locator('.answer').textContent())!.trim();
    expect(answer.length).toBeGreaterThan(0);
    const states = (await page.evaluate('window.__states')) as string[];
    const distinct = new Set(states.filter((s) => s && s !== answer));
    expect(distinct.size).toBeGreaterThanOrEqual(2); // it streamed: partial answers were shown
    for (const s of distinct) expect(answer.startsWith(s.trim())).toBe(true);
    expect(await bubble.locator('.stats').textContent()).toMatch(/\d+ tokens · [\d.]+ s · [\d.]+ tokens\/s/);
    // The user's bubble carries the image.
    expect(await page.locator('.msg.user img').count()).toBe(1);
  });

  it('a plain message continues the conversation', async () => {
    await type(page, 'What colour is the circle?');
    const bubble = await reply(page, 2);
    expect(await bubble.getAttribute('data-state')).toBe('done');
    expect((await bubble.locator('.answer').textContent())!.trim().length).toBeGreaterThan(0);
    expect(await page.locator('.msg.user img').count()).toBe(1); // the image went with /describe only
  });

  it('/quiz 1 hides the answer until Reveal is clicked; Another question adds a round', async () => {
    await type(page, '/quiz 1');
    const bubble = await reply(page, 3, 120_000);
    expect(await bubble.getAttribute('data-state')).toBe('done');
    expect((await bubble.locator('.quiz .description').textContent())!.trim().length).toBeGreaterThan(0);
    const round = bubble.locator('.quiz .round').first();
    expect(await round.locator('.question').textContent()).toMatch(/^Q1: \S/);
    const answer = round.locator('.answer-text');
    expect((await answer.textContent())!.trim().length).toBeGreaterThan(0);
    expect(await answer.isVisible()).toBe(false);
    await round.locator('button.reveal').click();
    expect(await answer.isVisible()).toBe(true);
    expect(await round.locator('button.reveal').textContent()).toBe('Hide answer');

    await bubble.locator('button.more').click();
    const more = await reply(page, 4, 120_000);
    expect(await more.getAttribute('data-state')).toBe('done');
    expect(await more.locator('.quiz .round .question').first().textContent()).toMatch(/^Q2: \S/);
    expect(await more.locator('.quiz .round .answer-text').first().isVisible()).toBe(false);
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground.png'), fullPage: true });
  });

  it('a dropped text file starts a new conversation and gets a clear error inline', async () => {
    await page.evaluate(`{
      const dt = new DataTransfer();
      dt.items.add(new File(['hello, this is not a picture\\n'], 'notes.txt', { type: 'text/plain' }));
      window.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }`);
    await page.locator('#file-name', { hasText: 'notes.txt' }).waitFor();
    await type(page, '/describe');
    const bubble = await reply(page, 5);
    expect(await bubble.getAttribute('data-state')).toBe('error');
    expect(await bubble.locator('.error').textContent()).toBe('That file is not an image I can read (use JPEG, PNG, WebP or GIF).');
    // A follow-up in the new (failed) conversation says it has nothing to continue.
    await type(page, 'and now?');
    const next = await reply(page, 6);
    expect(await next.locator('.error').textContent()).toBe('That file is not an image I can read (use JPEG, PNG, WebP or GIF).');
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground-error.png'), fullPage: true });
  });

  it('commands that need an image say so, unknown commands get help', async () => {
    await page.click('#new-conversation');
    await type(page, '/ask what is this?');
    const a = await reply(page, 7);
    expect(await a.locator('.error').textContent()).toBe('Drop, paste or choose an image first.');
    await type(page, '/frobnicate');
    const b = await reply(page, 8);
    expect(await b.locator('.error').textContent()).toMatch(/^Unknown command \/frobnicate\. Try \/describe/);
  });
});

describe('playground queue place', () => {
  it('shows the place in the queue while a request waits', async () => {
    // Scripted commands: the request waits at position 3, then 2, then runs.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const stub = {
      run(_req: unknown, emit: (e: ReplyEvent) => void) {
        const done = (async () => {
          emit({ type: 'queued', position: 3 });
          await gate;
          emit({ type: 'queued', position: 2 });
          emit({ type: 'started' });
          emit({ type: 'progress', reply: { kind: 'answer', text: 'A red' } });
          emit({ type: 'done', reply: { kind: 'answer', text: 'A red circle.' }, stats: { tokens: 4, totalMs: 20, tokensPerSecond: 200, cached: false } });
        })();
        return { done, cancel() {} };
      },
    } as unknown as Commands;
    const server = await startPlaygroundServer({ commands: stub, host: '127.0.0.1', port: 0, modelName: 'stub', maxImageBytes: 1 << 20, maxQuizRounds: 5, maxTextChars: 100 });
    const p = await context.newPage();
    try {
      await p.goto(server.url);
      await p.setInputFiles('#file', { name: 'c.png', mimeType: 'image/png', buffer: await redCircle() });
      await type(p, '/describe');
      const status = p.locator('.msg.bot .status');
      await status.filter({ hasText: 'Waiting in the queue — position 3' }).waitFor({ timeout: 10_000 });
      expect(await p.locator('.msg.bot').getAttribute('data-position')).toBe('3');
      release();
      const bubble = await reply(p, 1, 10_000);
      expect(await bubble.locator('.answer').textContent()).toBe('A red circle.');
      expect(await status.isVisible()).toBe(false);
    } finally {
      await p.close();
      await server.stop();
    }
  });

  it('refuses an image over the size limit before running anything', async () => {
    const stub = { run: () => ({ done: Promise.resolve(), cancel() {} }) } as unknown as Commands;
    const server = await startPlaygroundServer({ commands: stub, host: '127.0.0.1', port: 0, modelName: 'stub', maxImageBytes: 1000, maxQuizRounds: 5, maxTextChars: 100 });
    try {
      // The page checks the size before uploading.
      const p = await context.newPage();
      await p.goto(server.url);
      await p.locator('#model', { hasText: 'stub' }).waitFor();
      await p.setInputFiles('#file', { name: 'big.png', mimeType: 'image/png', buffer: await redCircle() });
      const bubble = p.locator('.msg.bot[data-state="error"]');
      await bubble.waitFor({ timeout: 5000 });
      expect(await bubble.locator('.error').textContent()).toMatch(/^The file is too large \([\d.]+ KB; the limit is 1 KB\)\.$/);
      await p.close();
      // And the server enforces it for clients that don't.
      const res = await fetch(`${server.url}api/run`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ conversationId: 'web:abcdefgh', input: '/describe', image: { data: (await redCircle()).toString('base64'), name: 'big.png' } }),
      });
      expect(res.status).toBe(413);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/too large/);
      // Another site's page may not drive the local model.
      const cross = await fetch(`${server.url}api/run`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', origin: 'https://evil.example' },
        body: JSON.stringify({ conversationId: 'web:abcdefgh', input: 'hi' }),
      });
      expect(cross.status).toBe(403);
    } finally {
      await server.stop();
    }
  });
});

beforeAll(() => mkdirSync(ARTIFACTS, { recursive: true }));
