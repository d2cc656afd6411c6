/**
 * `curio`: the command line. `describe`, `ask`, `quiz` and an interactive `chat` run the same
 * core commands the bots use, on the local worker pool; `start` runs the bots/playground.
 * Answers stream to stdout, progress goes to stderr, and any failure is one line on stderr
 * with a non-zero exit — never a stack trace.
 */
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { CommandRequest, Reply, ReplyEvent } from '../../core/commands';
import { ConfigError, loadConfig, type Config } from '../../config';
import { createApp, type App } from '../../app';

/** Exit codes: 1 = the request failed, 2 = bad usage or setup (flag, file, model). */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

interface GlobalOptions {
  model?: string;
  dtype?: 'fp32' | 'fp16';
  json?: boolean;
  seed?: number;
}

const out = process.stdout;
const err = process.stderr;

function int(name: string, min: number, max: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}.`);
    return n;
  };
}

async function readImage(file: string): Promise<Uint8Array> {
  try {
    const buf = await readFile(file);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CliError(code === 'ENOENT' ? `No such file: ${file}` : code === 'EISDIR' ? `${file} is a folder, not an image.` : `Cannot read ${file} (${code}).`, 2);
  }
}

function configFor(g: GlobalOptions): Config {
  const model: Record<string, unknown> = {};
  if (g.model) model.dir = g.model;
  if (g.dtype) model.dtype = g.dtype;
  try {
    return loadConfig({ overrides: { model, log: { level: 'warn' } } });
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(e.message, 2);
    throw e;
  }
}

async function openApp(g: GlobalOptions): Promise<App> {
  const config = configFor(g);
  const t0 = performance.now();
  const status = (msg: string) => {
    if (!g.json && err.isTTY) err.write(`\r\x1b[2K${msg}`);
  };
  status(`Loading model from ${config.model.dir}…`);
  try {
    const app = await createApp(config, { log: 'silent' });
    status('');
    if (!g.json && !err.isTTY) err.write(`Loaded ${app.modelName} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    else if (!g.json) err.write(`\r\x1b[2KLoaded ${app.modelName} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    return app;
  } catch (e) {
    status('');
    throw new CliError((e as Error).message, 2);
  }
}

/** A quiz as terminal text: the description, then numbered questions and their answers. */
function quizText(reply: Extract<Reply, { kind: 'quiz' }>): string {
  let s = reply.description;
  reply.rounds.forEach((r, i) => {
    s += `\n\nQ${i + 1}: ${r.question}`;
    if (r.answer) s += `\nA${i + 1}: ${r.answer}`;
  });
  return s;
}

/** Renders reply events to the terminal as they stream. */
class TerminalRenderer {
  private printed = '';

  constructor(private readonly json: boolean) {}

  onEvent(ev: ReplyEvent): void {
    if (this.json) return;
    if (ev.type === 'queued' && ev.position > 1) err.write(`Queued (position ${ev.position})…\n`);
    if (ev.type === 'progress' || ev.type === 'done') this.render(ev.reply);
  }

  private render(reply: Reply): void {
    const text = reply.kind === 'answer' ? reply.text : quizText(reply);
    // Streamed replies only grow; write the new suffix.
    if (text.startsWith(this.printed)) {
      out.write(text.slice(this.printed.length));
      this.printed = text;
    }
  }

  finish(): void {
    if (!this.json && this.printed) out.write('\n');
    this.printed = '';
  }
}

async function runOnce(app: App, req: CommandRequest, g: GlobalOptions): Promise<Reply> {
  const renderer = new TerminalRenderer(!!g.json);
  let final: Reply | undefined;
  let failure: string | undefined;
  let stats: unknown;
  const running = app.commands.run(req, (ev) => {
    renderer.onEvent(ev);
    if (ev.type === 'done') {
      final = ev.reply;
      stats = ev.stats;
    } else if (ev.type === 'refused' || ev.type === 'failed') failure = ev.message;
  });
  const onSigint = () => running.cancel();
  process.once('SIGINT', onSigint);
  await running.done;
  process.off('SIGINT', onSigint);
  renderer.finish();
  if (failure || !final) throw new CliError(failure ?? 'No answer.');
  if (g.json) out.write(JSON.stringify({ ...final, stats }) + '\n');
  return final;
}

const who = { userId: 'cli', channelIds: ['cli'] };
let conversationCounter = 0;
const newConversation = () => `cli:${process.pid}:${conversationCounter++}`;

async function withApp<T>(g: GlobalOptions, fn: (app: App) => Promise<T>): Promise<T> {
  const app = await openApp(g);
  try {
    return await fn(app);
  } finally {
    await app.close();
  }
}

export function buildProgram(): Command {
  const program = new Command('curio')
    .description('Curio: ask SQ-LLaVA about images from the terminal, or run the Discord/Slack bots.')
    .option('--model <dir>', 'model bundle folder (default: the bundled SQ-LLaVA-micro)')
    .addOption(new Option('--dtype <dtype>', 'weight variant').choices(['fp32', 'fp16']))
    .option('--json', 'machine-readable output (one JSON object)')
    .option('--seed <n>', 'sampler seed, for reproducible quiz questions', int('--seed', 0, 2 ** 31 - 1))
    .showHelpAfterError('(run curio --help for usage)')
    .exitOverride();

  const globals = () => program.opts<GlobalOptions>();

  program
    .command('describe')
    .description('describe an image')
    .argument('<image>', 'image file')
    .option('--detailed', 'a detailed description instead of one sentence')
    .action(async (image: string, o: { detailed?: boolean }) => {
      const g = globals();
      const bytes = await readImage(image);
      await withApp(g, (app) =>
        runOnce(app, { command: 'describe', who, conversationId: newConversation(), image: { bytes, name: image }, detail: o.detailed ? 'detailed' : 'brief', seed: g.seed }, g),
      );
    });

  program
    .command('ask')
    .description('ask a question about an image')
    .argument('<image>', 'image file')
    .argument('<question>', 'the question')
    .action(async (image: string, question: string) => {
      const g = globals();
      const bytes = await readImage(image);
      await withApp(g, (app) => runOnce(app, { command: 'ask', who, conversationId: newConversation(), image: { bytes, name: image }, text: question, seed: g.seed }, g));
    });

  program
    .command('quiz')
    .description('let the model ask itself questions about an image, and answer them')
    .argument('<image>', 'image file')
    .option('--rounds <n>', 'number of questions (1-5)', int('--rounds', 1, 5), 3)
    .action(async (image: string, o: { rounds: number }) => {
      const g = globals();
      const bytes = await readImage(image);
      await withApp(g, (app) => runOnce(app, { command: 'quiz', who, conversationId: newConversation(), image: { bytes, name: image }, rounds: o.rounds, seed: g.seed }, g));
    });

  program
    .command('chat')
    .description('an interactive conversation about an image (empty line or Ctrl-D to quit)')
    .argument('<image>', 'image file')
    .action(async (image: string) => {
      const g = globals();
      const bytes = await readImage(image);
      await withApp(g, async (app) => {
        const conversationId = newConversation();
        await runOnce(app, { command: 'describe', who, conversationId, image: { bytes, name: image }, seed: g.seed }, g);
        const rl = createInterface({ input: process.stdin, terminal: false });
        // The line iterator buffers piped input that arrives while an answer is streaming.
        const lines = rl[Symbol.asyncIterator]();
        try {
          for (;;) {
            err.write('> ');
            const next = await lines.next();
            if (next.done || !next.value.trim()) break; // Ctrl-D or an empty line
            try {
              await runOnce(app, { command: 'followup', who, conversationId, text: next.value, seed: g.seed }, g);
            } catch (e) {
              if (!(e instanceof CliError)) throw e;
              err.write(`${e.message}\n`);
            }
          }
        } finally {
          rl.close();
        }
      });
    });

  program
    .command('worker')
    .description('run a GPU host: take jobs from the Redis queue (redis.url / REDIS_URL) into the local model pool')
    .option('--host-id <id>', 'host id for follow-up affinity (default: worker.host_id, else the host name)')
    .option('--concurrency <n>', 'jobs taken from each queue at once (default: the pool capacity)', int('--concurrency', 1, 1024))
    .action(async (o: { hostId?: string; concurrency?: number }) => {
      const g = globals();
      const model: Record<string, unknown> = {};
      if (g.model) model.dir = g.model;
      if (g.dtype) model.dtype = g.dtype;
      let config: Config;
      try {
        config = loadConfig({ overrides: { model } });
      } catch (e) {
        throw new CliError((e as Error).message, 2);
      }
      // Loaded on demand (and with require: bin/curio.js registers tsx for CommonJS only).
      const { serveWorker } = require('../../inference/remote/serve') as typeof import('../../inference/remote/serve');
      try {
        await serveWorker(config, o);
      } catch (e) {
        throw new CliError((e as Error).message, 2);
      }
      await new Promise(() => {}); // runs until SIGINT/SIGTERM (serveWorker exits the process)
    });

  program
    .command('start')
    .description('run Curio: the Discord/Slack bots when tokens are set, else the local playground')
    .action(async () => {
      // Loaded on demand (and with require: bin/curio.js registers tsx for CommonJS only).
      const { start } = require('../../main') as typeof import('../../main');
      await start();
    });

  program
    .command('discord')
    .description('Discord administration')
    .command('register')
    .description('register the slash and context-menu commands (env DISCORD_TOKEN, DISCORD_APPLICATION_ID)')
    .option('--guild <id>', 'only in this server: instant, for testing (global commands can take up to an hour to appear)')
    .action(async (o: { guild?: string }) => {
      const token = process.env.DISCORD_TOKEN;
      const applicationId = process.env.DISCORD_APPLICATION_ID;
      if (!token || !applicationId) throw new CliError('Set DISCORD_TOKEN and DISCORD_APPLICATION_ID (Discord developer portal → your application).', 2);
      if (o.guild !== undefined && !/^\d{17,20}$/.test(o.guild)) throw new CliError(`--guild must be a server id (a number), not "${o.guild}".`, 2);
      const config = configFor(globals());
      // Loaded on demand (and with require: bin/curio.js registers tsx for CommonJS only).
      const { registerDiscordCommands } = require('../discord/commands') as typeof import('../discord/commands');
      let registered: Array<{ name: string }>;
      try {
        registered = await registerDiscordCommands({ token, applicationId, guildId: o.guild, maxQuestionLength: config.limits.max_text_chars, maxQuizQuestions: config.limits.max_quiz_questions });
      } catch (e) {
        throw new CliError(`Discord refused the commands: ${(e as Error).message}`);
      }
      out.write(`Registered ${registered.map((c) => c.name).join(', ')} ${o.guild ? `in server ${o.guild}` : 'globally'}.\n`);
    });

  return program;
}

export async function main(argv = process.argv): Promise<number> {
  // `curio describe x.png | head -1`: a closed pipe ends the program quietly.
  out.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  const program = buildProgram();
  program.configureOutput({ writeErr: (s) => err.write(s), writeOut: (s) => out.write(s) });
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2; // commander printed the message
    if (e instanceof CliError) {
      err.write(`curio: ${e.message}\n`);
      return e.exitCode;
    }
    err.write(`curio: ${(e as Error).message ?? String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
