/** The Discord adapter: the bot, its command definitions and registration, rendering. */
export { createDiscordBot, DISCORD_CDN_HOSTS, DISCORD_INTENTS, type DiscordBot, type DiscordBotOptions, type BotLogger } from './bot';
export { commandDefinitions, registerDiscordCommands, COMMAND, OPTION, type RegisterOptions } from './commands';
export { renderReply, splitForDiscord, DISCORD_MESSAGE_LIMIT, type DiscordPayload } from './render';

/**
 * Permissions the bot needs in a server (what `curio discord register` and the invite link use):
 * View Channels, Send Messages, Send Messages in Threads, Create Public Threads, Read Message
 * History (to read the message a user replies to). No Attach Files, Embed Links, Manage or
 * Mention Everyone: Curio only writes text, and disables all mentions in what it sends.
 */
export const DISCORD_PERMISSIONS =
  (1n << 10n) | // View Channels
  (1n << 11n) | // Send Messages
  (1n << 38n) | // Send Messages in Threads
  (1n << 35n) | // Create Public Threads
  (1n << 16n); // Read Message History

export function inviteUrl(applicationId: string): string {
  return `https://discord.com/oauth2/authorize?client_id=${applicationId}&scope=bot%20applications.commands&permissions=${DISCORD_PERMISSIONS}`;
}
