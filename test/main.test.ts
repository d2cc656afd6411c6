import path from 'node:path';
import { startServices, type Started } from '../src/main';
import { FakeDiscord } from './support/fake-discord';
import { FakeSlack, BOT_TOKEN, SIGNING_SECRET, sendSigned } from './support/fake-slack';

/**
 * `npm start` wiring: which services start for which environment. The adapters' behaviour is
 * tested in test/adapters; here the real startServices() connects the real discord.js and Bolt
 * clients to the loopback fakes and serves the playground, on the golden test bundle.
 */
const BUNDLE = path.resolve(__dirname, 'fixtures/golden/bundle');
const base = {
  CURIO_MODEL__DIR: BUNDLE,
  CURIO_INFERENCE__INTRA_OP_THREADS: '1',
  CURIO_HTTP__PORT: '0',
  CURIO_PLAYGROUND__PORT: '0',
  CURIO_LOG__LEVEL: 'warn',
};

let started: Started | undefined;
afterEach(async () => {
  await started?.stop();
  started = undefined;
});

it('with no platform tokens, starts only the local playground', async () => {
  started = await startServices({ ...base });
  expect(started.services.map((s) => s.name)).toEqual(['playground']);
  const url = (started.services[0] as unknown as { url: string }).url;
  const page = await fetch(url);
  expect(page.status).toBe(200);
  expect(await page.text()).toContain('<html');
});

it('with Discord and Slack tokens, starts both bots and no playground', async () => {
  const discord = await FakeDiscord.start();
  const slack = await FakeSlack.start();
  try {
    started = await startServices({
      ...base,
      DISCORD_TOKEN: 'fake-discord-token',
      DISCORD_APPLICATION_ID: discord.applicationId,
      DISCORD_API_URL: discord.api,
      SLACK_BOT_TOKEN: BOT_TOKEN,
      SLACK_SIGNING_SECRET: SIGNING_SECRET,
      SLACK_API_URL: slack.apiUrl,
      SLACK_PORT: '0',
    });
    expect(started.services.map((s) => s.name)).toEqual(['discord', 'slack']);
    await discord.ready; // the gateway identified
    expect(discord.identify?.token).toBe('fake-discord-token');
    // Slack's HTTP receiver is up and verifies signatures.
    const url = (started.services[1] as unknown as { url: string }).url;
    const challenge = JSON.stringify({ type: 'url_verification', challenge: 'c-42', token: 'x' });
    const ok = await sendSigned(url, challenge, 'application/json');
    expect(ok).toMatchObject({ status: 200 });
    expect(ok.body).toContain('c-42');
    expect((await sendSigned(url, challenge, 'application/json', { secret: 'wrong' })).status).toBe(401);
  } finally {
    await started?.stop();
    started = undefined;
    await discord.close();
    await slack.close();
  }
});

it('refuses to start Discord without its application id, in one line', async () => {
  await expect(startServices({ ...base, DISCORD_TOKEN: 'x' })).rejects.toThrow('DISCORD_TOKEN is set but DISCORD_APPLICATION_ID is not');
});
