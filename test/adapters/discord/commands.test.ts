/** Command definitions and `registerDiscordCommands` against the fake Discord's REST API. */
import { PermissionFlagsBits } from 'discord.js';
import { commandDefinitions, registerDiscordCommands } from '../../../src/adapters/discord/commands';
import { DISCORD_PERMISSIONS, inviteUrl } from '../../../src/adapters/discord';
import { FakeDiscord } from '../../support/fake-discord';

let fake: FakeDiscord;
beforeAll(async () => {
  fake = await FakeDiscord.start();
});
afterAll(async () => {
  await fake.close();
});

describe('Discord commands', () => {
  it('defines /describe, /ask, /quiz and the two message context-menu commands', () => {
    const defs = commandDefinitions({ maxQuestionLength: 1000, maxQuizQuestions: 5 }) as Array<Record<string, any>>;
    expect(defs.map((d) => [d.name, d.type])).toEqual([
      ['describe', 1],
      ['ask', 1],
      ['quiz', 1],
      ['Describe image', 3],
      ['Quiz me', 3],
    ]);
    const opts = (name: string) => defs.find((d) => d.name === name)!.options.map((o: any) => `${o.name}:${o.type}${o.required ? '!' : ''}`);
    expect(opts('describe')).toEqual(['image:11', 'url:3', 'detail:3']);
    expect(opts('ask')).toEqual(['question:3!', 'image:11', 'url:3']);
    expect(opts('quiz')).toEqual(['image:11', 'url:3', 'questions:4']);
    const questions = defs.find((d) => d.name === 'quiz')!.options[2];
    expect([questions.min_value, questions.max_value]).toEqual([1, 5]);
    for (const d of defs) expect(d.contexts).toEqual([0, 1]);
  });

  it('registers globally, or in one guild', async () => {
    const global = await registerDiscordCommands({ token: 'reg-token', applicationId: fake.applicationId, restApi: fake.api });
    expect(global.map((c) => c.name)).toEqual(['describe', 'ask', 'quiz', 'Describe image', 'Quiz me']);
    const put = fake.requests.find((r) => r.method === 'PUT' && r.path === `/applications/${fake.applicationId}/commands`)!;
    expect(put.headers.authorization).toBe('Bot reg-token');
    expect(put.body).toHaveLength(5);

    await registerDiscordCommands({ token: 'reg-token', applicationId: fake.applicationId, guildId: fake.guildId, restApi: fake.api });
    expect(fake.requests.some((r) => r.method === 'PUT' && r.path === `/applications/${fake.applicationId}/guilds/${fake.guildId}/commands`)).toBe(true);
  });

  it('asks for only the permissions it uses', () => {
    const p = PermissionFlagsBits;
    expect(DISCORD_PERMISSIONS).toBe(p.ViewChannel | p.SendMessages | p.SendMessagesInThreads | p.CreatePublicThreads | p.ReadMessageHistory);
    expect(DISCORD_PERMISSIONS.toString()).toBe('309237713920');
    expect(inviteUrl('123')).toBe('https://discord.com/oauth2/authorize?client_id=123&scope=bot%20applications.commands&permissions=309237713920');
  });
});
