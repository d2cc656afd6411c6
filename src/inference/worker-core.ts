/**
 * What an inference worker does with one job, given its loaded Engine. Kept apart from the
 * piscina entry point (workers/inference-worker.ts) so the logic is plain, importable code.
 *
 * Per worker: one Engine (loaded once), one BatchingRunner shared by every job in flight, so
 * their decode steps run together. Per job: restore (or rebuild) the conversation, run the task
 * with a cooperative stop flag, stream tokens over the job's MessagePort, and hand the updated
 * conversation state back to the client (transferred, not copied).
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';

import {
  continueQuiz,
  Engine,
  GenerationError,
  ImageEmbedding,
  ImageError,
  IMAGE_TOKEN_INDEX,
  openSequence,
  closeTurn,
  Sequence,
  sqAnswerTurn,
  TaskContext,
  userTurn,
  vuserTurn,
} from '../model';
import * as tasks from '../model/tasks';
import { BatchingRunner } from './batcher';
import { PortMessage, stateTransferList, toShared, WorkerRequest, WorkerResponse, WorkerTask } from './protocol';
import { ConversationTurn, InferenceError, InferenceJob, JobError, JobResult, QuizPart } from './types';

export interface WorkerHandlerOptions {
  name: string;
  maxBatch?: number;
}

export type WorkerHandler = (req: WorkerRequest) => Promise<unknown>;

/** Maps engine errors to the job protocol's codes and short messages. */
export function toJobError(err: unknown): JobError {
  if (err instanceof InferenceError) return err.toJSON();
  if (err instanceof ImageError) return { code: 'bad_image', message: err.message };
  if (err instanceof GenerationError) {
    if (err.code === 'bad_request') return { code: 'bad_request', message: err.message };
    if (err.code === 'context_full') return { code: 'bad_request', message: 'This conversation is too long for the model; please start a new one.' };
    return { code: 'internal', message: 'The model failed on this request.' };
  }
  return { code: 'internal', message: 'Something went wrong while generating.' };
}

/**
 * Rebuilds a conversation's Sequence when its cached state is missing: exactly from its token
 * ids when core kept them (`history.tokens`), otherwise by re-tokenising the turns' text the
 * way the engine built them (equal to the original whenever decode→encode round-trips).
 */
export function sequenceFromHistory(ctx: TaskContext, image: ImageEmbedding, history: NonNullable<InferenceJob['history']>): Sequence {
  if (history.tokens?.length) {
    if (history.tokens.filter((t) => t === IMAGE_TOKEN_INDEX).length !== 1) {
      throw new InferenceError('bad_request', 'The saved conversation is damaged.');
    }
    return Sequence.fromTokens(history.template, ctx.runner.layers, image, history.tokens);
  }
  const turns = history.turns;
  if (!turns.length || turns[0].role !== 'USER') throw new InferenceError('bad_request', 'The saved conversation is empty.');
  const tpl = ctx.manifest.templates[history.template];
  const tok = ctx.tokenizer;
  const seq = openSequence(ctx, history.template, image, turns[0].text);
  let prev: ConversationTurn['role'] = 'USER';
  for (const t of turns.slice(1)) {
    if (t.role === 'ASSISTANT') {
      if (prev === 'VUSER') {
        closeTurn(ctx, seq);
        seq.appendTokens(tok.encode(sqAnswerTurn(tpl)));
      }
      seq.appendTokens(tok.encode(t.text));
    } else {
      closeTurn(ctx, seq);
      seq.appendTokens(tok.encode(t.role === 'USER' ? userTurn(tpl, t.text) : vuserTurn(tpl)));
      if (t.role === 'VUSER') seq.appendTokens(tok.encode(t.text));
    }
    prev = t.role;
  }
  closeTurn(ctx, seq);
  return seq;
}

/** A quiz job continues an existing quiz conversation when it carries that conversation's history. */
export function isQuizContinuation(job: InferenceJob): boolean {
  return job.task === 'quiz' && !!job.history && job.history.turns.length > 0;
}

export function createWorkerHandler(engine: Engine, o: WorkerHandlerOptions): WorkerHandler {
  const batcher = new BatchingRunner(engine.runner, o.maxBatch ?? 16);
  const ctx: TaskContext = { ...engine.context, runner: batcher };
  const stats = () => ({ worker: o.name, batches: { ...batcher.stats, histogram: { ...batcher.stats.histogram } } });

  async function runJob(t: WorkerTask): Promise<unknown> {
    const { job, port } = t;
    const post = (m: PortMessage) => port.postMessage(m);
    const t0 = performance.now();
    const shouldStop = () => Atomics.load(t.cancel, 0) !== 0 || (job.deadline !== undefined && Date.now() > job.deadline);
    try {
      post({ type: 'started', worker: o.name });
      const continuing = job.task === 'chat' || isQuizContinuation(job);
      let embedding = t.embedding;
      let imageEncodeMs = 0;
      const needImage = !embedding && (!continuing || !t.state);
      if (needImage) {
        if (!job.image.bytes?.byteLength) throw new InferenceError('bad_request', 'The image of this conversation is no longer available; please post it again.');
        const prepared = await engine.prepareImage(job.image.bytes);
        const enc = await engine.encodeImage(prepared);
        imageEncodeMs = enc.ms;
        embedding = { ...enc.embedding, data: toShared(enc.embedding.data) };
        post({ type: 'embedding', digest: job.image.digest, embedding });
      }
      const token = (text: string, part?: QuizPart, round?: number) => {
        if (text) post({ type: 'token', text, ...(part ? { part } : {}), ...(round !== undefined && round >= 0 ? { round } : {}) });
      };
      const run = { maxNewTokens: job.maxNewTokens, seed: job.seed, shouldStop };
      const restore = (): Sequence => {
        if (t.state) return Sequence.restore(t.state);
        if (!job.history?.turns.length) throw new InferenceError('bad_request', 'This conversation has expired; please start a new one.');
        return sequenceFromHistory(ctx, embedding!, job.history);
      };

      let result: Omit<JobResult, 'timings' | 'worker' | 'cache'>;
      let seq: Sequence;
      let firstTokenMs = 0;
      let tps = 0;
      const prior = job.history?.turns ?? [];
      switch (job.task) {
        case 'describe':
        case 'ask': {
          const detail = job.detail ?? 'brief';
          const prompt = job.task === 'describe' ? (detail === 'brief' ? ctx.manifest.prompts.describe_brief : ctx.manifest.prompts.describe_detailed) : tasks.sanitizeUserText(job.text ?? '');
          const r = job.task === 'describe'
            ? await tasks.describe(ctx, embedding!, detail, { ...run, onToken: (e) => token(e.text) }, imageEncodeMs)
            : await tasks.ask(ctx, embedding!, job.text ?? '', { ...run, onToken: (e) => token(e.text) }, imageEncodeMs);
          seq = r.sequence;
          firstTokenMs = r.timings.firstTokenMs;
          tps = r.timings.tokensPerSecond;
          result = {
            task: job.task,
            text: r.text.trim(),
            finishReason: r.finishReason,
            template: 'v1',
            turns: [{ role: 'USER', text: prompt }, { role: 'ASSISTANT', text: r.text.trim() }],
            tokens: { prompt: r.tokens.prompt, generated: r.tokens.generated },
            ...(r.seed !== undefined ? { seed: r.seed } : {}),
          };
          break;
        }
        case 'chat': {
          seq = restore();
          const r = await tasks.chat(ctx, seq, job.text ?? '', { ...run, onToken: (e) => token(e.text) });
          firstTokenMs = r.timings.firstTokenMs;
          tps = r.timings.tokensPerSecond;
          result = {
            task: 'chat',
            text: r.text.trim(),
            finishReason: r.finishReason,
            template: seq.template,
            turns: [...prior, { role: 'USER', text: tasks.sanitizeUserText(job.text ?? '') }, { role: 'ASSISTANT', text: r.text.trim() }],
            tokens: { prompt: r.tokens.prompt, generated: r.tokens.generated },
            ...(r.seed !== undefined ? { seed: r.seed } : {}),
          };
          break;
        }
        case 'quiz': {
          const rounds = job.rounds ?? 1;
          const qo = {
            ...run,
            rounds,
            onToken: (e: tasks.QuizEvent) => {
              if (!firstTokenMs && e.text) firstTokenMs = performance.now() - t0;
              token(e.text, e.part, e.round);
            },
          };
          const continuing = isQuizContinuation(job);
          const r = continuing ? await continueQuiz(ctx, restore(), qo) : await tasks.quiz(ctx, embedding!, qo, imageEncodeMs);
          seq = r.sequence;
          tps = r.timings.tokensPerSecond;
          const turns: ConversationTurn[] = continuing
            ? [...prior]
            : [{ role: 'USER', text: ctx.manifest.prompts.describe_detailed }, { role: 'ASSISTANT', text: r.description }];
          for (const q of r.rounds) {
            turns.push({ role: 'VUSER', text: q.question });
            if (q.answerFinish !== 'cancelled' || q.answer) turns.push({ role: 'ASSISTANT', text: q.answer });
          }
          result = {
            task: 'quiz',
            text: r.description,
            rounds: r.rounds.map((q) => ({ question: q.question, answer: q.answer })),
            finishReason: r.finishReason,
            template: 'v1_sq',
            turns,
            tokens: { prompt: r.tokens.prompt, generated: r.tokens.generated },
            seed: r.seed,
          };
          break;
        }
        default:
          throw new InferenceError('bad_request', `Unknown task "${String((job as { task: unknown }).task)}".`);
      }
      const totalMs = performance.now() - t0;
      const full: JobResult = {
        ...result,
        conversationTokens: [...seq.tokens],
        timings: { queueMs: 0, imageEncodeMs, firstTokenMs, totalMs, tokensPerSecond: tps },
        cache: { embedding: !!t.embedding, conversation: !!t.state },
        worker: o.name,
      };
      const state = seq.snapshot();
      const resp: WorkerResponse = { ok: true, result: full, state, turns: full.turns.length, stats: stats() };
      return movable(resp, stateTransferList(state));
    } catch (err) {
      const resp: WorkerResponse = { ok: false, error: toJobError(err), stats: stats() };
      return resp;
    } finally {
      port.close();
    }
  }

  return async (req: WorkerRequest) => {
    if (req.kind === 'info') return { ok: true, info: engine.info, stats: stats() } satisfies WorkerResponse;
    return runJob(req);
  };
}

/** Wraps a response so piscina transfers `buffers` with it instead of copying them. */
function movable(value: unknown, buffers: ArrayBuffer[]): unknown {
  if (!buffers.length) return value;
  return move({
    get [transferableSymbol]() {
      return buffers;
    },
    get [valueSymbol]() {
      return value;
    },
  } as never);
}
