/** The Slack adapter: see app.ts. */
export { createSlackBot, slackFromEnv, BOT_EVENTS, BOT_SCOPES, SHORTCUTS, SLASH_COMMANDS } from './app';
export type { SlackBot, SlackBotOptions, SlackEnv, SlackLogger } from './app';
export { MemoryEventDeduper, MemoryThreadRegistry, RedisEventDeduper, RedisThreadRegistry } from './state';
export type { EventDeduper, ThreadRegistry } from './state';
