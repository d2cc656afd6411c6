/** The Slack adapter: see app.ts. */
import type { App } from '../../app';
import { createSlackBot, slackFromEnv } from './app';

export { createSlackBot, slackFromEnv, BOT_EVENTS, BOT_SCOPES, SHORTCUTS, SLASH_COMMANDS } from './app';
export type { SlackBot, SlackBotOptions, SlackEnv, SlackLogger } from './app';
export { MemoryEventDeduper, MemoryThreadRegistry, RedisEventDeduper, RedisThreadRegistry } from './state';
export type { EventDeduper, ThreadRegistry } from './state';

/**
 * Starts the Slack bot for `npm start` when SLACK_BOT_TOKEN is set (HTTP on SLACK_PORT with
 * SLACK_SIGNING_SECRET, or Socket Mode with SLACK_APP_TOKEN); undefined when Slack is not
 * configured. Throws with a one-line reason when it is configured wrongly.
 */
export async function startSlackBot(app: App, env: NodeJS.ProcessEnv = process.env): Promise<{ name: string; url?: string; stop(): Promise<void> } | undefined> {
  const slack = slackFromEnv(env);
  if (!slack) return undefined;
  const bot = createSlackBot({
    commands: app.commands,
    config: app.config,
    botToken: slack.botToken,
    signingSecret: slack.signingSecret,
    appToken: slack.appToken,
    port: slack.port,
    redis: app.redis,
    logger: app.logger.child({ adapter: 'slack' }),
    modelName: app.modelName,
    // A proxy or test double of Slack's Web API.
    ...(env.SLACK_API_URL ? { slackApiUrl: env.SLACK_API_URL } : {}),
  });
  const { port } = await bot.start();
  return { name: 'slack', ...(port !== undefined ? { url: `http://127.0.0.1:${port}/slack/events` } : {}), stop: () => bot.stop() };
}
