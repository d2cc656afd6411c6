/**
 * The local playground adapter, started by `npm start` when no platform token is configured
 * (or whenever `playground.enabled` is true). See server.ts for the protocol.
 */
import type { App } from '../../app';
import { startPlaygroundServer, type Playground } from './server';

export { startPlaygroundServer, type Playground, type PlaygroundOptions } from './server';
export { parseInput } from './parse';

const MB = 1024 * 1024;

/** Starts the playground on `playground.host`/`playground.port` (overridable for tests). */
export async function startPlayground(app: App, overrides: { host?: string; port?: number } = {}): Promise<Playground> {
  const { config } = app;
  const playground = await startPlaygroundServer({
    commands: app.commands,
    host: overrides.host ?? config.playground.host,
    port: overrides.port ?? config.playground.port,
    modelName: app.modelName,
    maxImageBytes: Math.floor(config.limits.max_image_mb * MB),
    maxQuizRounds: config.limits.max_quiz_questions,
    maxTextChars: config.limits.max_text_chars,
    logger: app.logger.child({ adapter: 'web' }),
  });
  app.logger.info({ url: playground.url }, 'playground listening');
  return playground;
}
