/**
 * `npm start` / `curio start`: Curio as a service. Loads the configuration, builds the app
 * (model workers or the remote queue, stores), then starts whatever is configured: the Discord
 * bot when DISCORD_TOKEN is set, the Slack bot when SLACK_BOT_TOKEN is set, and the local
 * playground when enabled ("auto": when no platform token is set). Shuts down cleanly on
 * SIGINT/SIGTERM: adapters stop taking requests, running jobs finish, workers close.
 */
import { ConfigError, loadConfig } from './config';
import { createApp, type App } from './app';
import { startSlackBot } from './adapters/slack';
import { createDiscordBot } from './adapters/discord';
import { startPlayground } from './adapters/web';
import { startOpsServer } from './observability/http';

export interface Service {
  name: string;
  stop(): Promise<void>;
}

export interface Started {
  app: App;
  services: Service[];
  stop(): Promise<void>;
}

/** Starts the configured services; resolves once all are up. */
export async function startServices(env: NodeJS.ProcessEnv = process.env): Promise<Started> {
  const config = loadConfig({ env });
  const app = await createApp(config);
  const log = app.logger;
  const services: Service[] = [];
  try {
    if (config.http.port > 0) {
      const ops = await startOpsServer({
        host: config.http.host,
        port: config.http.port,
        metrics: app.metrics,
        inference: app.inference,
        redis: app.redis,
        logger: log,
        // A local pool exposes its model info; a remote-queue client's workers live elsewhere.
        requireLocalWorkers: 'info' in app.inference,
      });
      services.push(ops);
      log.info({ url: ops.url, endpoints: ['/metrics', '/healthz', '/readyz'] }, 'metrics and health listening');
    }
    const hasDiscord = !!env.DISCORD_TOKEN;
    const hasSlack = !!env.SLACK_BOT_TOKEN;
    if (hasDiscord) {
      if (!env.DISCORD_APPLICATION_ID) throw new ConfigError('DISCORD_TOKEN is set but DISCORD_APPLICATION_ID is not (Developer Portal → your app → Application ID)');
      const bot = createDiscordBot({ commands: app.commands, config, token: env.DISCORD_TOKEN!, applicationId: env.DISCORD_APPLICATION_ID, logger: log,
        // A proxy or test double of Discord's REST API (the gateway URL comes from it).
        ...(env.DISCORD_API_URL ? { restApi: env.DISCORD_API_URL } : {}),
      });
      await bot.start();
      services.push({ name: 'discord', stop: () => bot.stop() });
    }
    if (hasSlack) {
      const slack = await startSlackBot(app, env);
      if (slack) services.push(slack);
    }
    const playground = config.playground.enabled === true || (config.playground.enabled === 'auto' && !hasDiscord && !hasSlack);
    if (playground) {
      const web = await startPlayground(app);
      services.push(web);
      process.stderr.write(`\nCurio playground: ${web.url}  (model ${app.modelName})\n\n`);
    }
    log.info({ services: services.map((s) => s.name), model: app.modelName }, 'curio started');
  } catch (err) {
    await Promise.allSettled(services.map((s) => s.stop()));
    await app.close();
    throw err;
  }
  return {
    app,
    services,
    async stop() {
      await Promise.allSettled(services.map((s) => s.stop()));
      await app.close();
    },
  };
}

export async function start(): Promise<void> {
  let started: Started;
  try {
    started = await startServices();
  } catch (err) {
    const msg = err instanceof ConfigError ? err.message : `cannot start: ${(err as Error).message}`;
    process.stderr.write(`curio: ${msg}\n`);
    process.exitCode = 2;
    return;
  }
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    started.app.logger.info({ signal }, 'shutting down');
    started.stop().finally(() => process.exit(0));
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

if (require.main === module) void start();
