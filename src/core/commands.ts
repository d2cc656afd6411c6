/**
 * Curio's commands, platform-neutral: `/describe`, `/ask`, `/quiz`, "another question", and
 * follow-up messages in a conversation's thread. Each request becomes a stream of reply events
 * that an adapter renders (edit a Discord message, `chat.update` in Slack, SSE in the web
 * playground, stdout in the CLI). Core knows nothing of platforms or models.
 */

import { createHash } from 'node:crypto';
import { checkAccess, type AccessLists, type Requester } from './access';
import { mayContinue, type Conversation, type ConversationStore, type ImageStore, type Turn } from './conversation';
import type { BucketPolicy, RateLimiter } from './rate-limit';
import type { ResultCache } from './result-cache';
import {
  InferenceError,
  type InferenceClient,
  type InferenceJob,
  type JobEvent,
  type JobResult,
  type Priority,
  type QuizPart,
  type TaskKind,
} from '../inference/types';

export type CommandName = 'describe' | 'ask' | 'quiz' | 'more' | 'followup';

export interface ImageUpload {
  bytes: Uint8Array;
  /** File name or URL the image came from (for messages only). */
  name?: string;
}

export interface CommandRequest {
  command: CommandName;
  who: Requester;
  /** The thread the reply lives in: the conversation's key. */
  conversationId: string;
  /** describe/ask/quiz: the image; followup: a new image starts a new conversation. */
  image?: ImageUpload;
  /** ask: the question; followup: the message. */
  text?: string;
  detail?: 'brief' | 'detailed';
  /** quiz: number of self-questions (1-5). */
  rounds?: number;
  seed?: number;
}

export interface QuizRoundView {
  question: string;
  answer: string;
}

export type Reply =
  | { kind: 'answer'; text: string }
  | { kind: 'quiz'; description: string; rounds: QuizRoundView[] };

export type ReplyEvent =
  | { type: 'queued'; position: number }
  | { type: 'started' }
  /** The reply so far (cumulative), for adapters that edit a message in place. */
  | { type: 'progress'; reply: Reply; part?: QuizPart }
  | { type: 'done'; reply: Reply; stats: ReplyStats }
  /** Not run: a policy said no (rate limit, access, busy). Show it privately when possible. */
  | { type: 'refused'; reason: RefusalReason; message: string; retryAfterMs?: number }
  | { type: 'failed'; code: string; message: string };

export type RefusalReason = 'denied' | 'rate_limited' | 'busy' | 'not_owner' | 'no_conversation';

export interface ReplyStats {
  tokens: number;
  totalMs: number;
  tokensPerSecond: number;
  cached: boolean;
  worker?: string;
}

export interface CommandLimits {
  /** Longest accepted question/message, in characters. */
  maxTextLength: number;
  maxQuizRounds: number;
  perUser: BucketPolicy;
  perChannel: BucketPolicy;
}

export interface CommandDeps {
  inference: InferenceClient;
  conversations: ConversationStore;
  images: ImageStore;
  limiter: RateLimiter;
  results?: ResultCache;
  access?: AccessLists;
  limits: CommandLimits;
  /** Conversations started by one user may be continued by anyone in the thread. */
  openConversations?: boolean;
  now?: () => number;
  newId?: () => string;
}

export const DEFAULT_LIMITS: CommandLimits = {
  maxTextLength: 1000,
  maxQuizRounds: 5,
  perUser: { capacity: 5, refillPerSecond: 1 / 12 },
  perChannel: { capacity: 20, refillPerSecond: 1 / 3 },
};

export interface Running {
  /** Settles when the request is finished (never rejects: failures are events). */
  done: Promise<void>;
  cancel(): void;
}

export function imageDigest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

const seconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000));

export class Commands {
  private readonly now: () => number;
  private readonly newId: () => string;

  constructor(private readonly deps: CommandDeps) {
    this.now = deps.now ?? Date.now;
    let n = 0;
    deps.newId ??= () => `${process.pid}-${Date.now().toString(36)}-${(n++).toString(36)}`;
    this.newId = deps.newId;
  }

  /** Runs a request, reporting everything through `emit`. */
  run(request: CommandRequest, emit: (event: ReplyEvent) => void): Running {
    let cancelled = false;
    let cancelJob: (() => void) | undefined;
    const done = this.execute(request, emit, (cancel) => {
      cancelJob = cancel;
      if (cancelled) cancel();
    }).catch((err: unknown) => {
      emit(this.failure(err));
    });
    return {
      done,
      cancel: () => {
        cancelled = true;
        cancelJob?.();
      },
    };
  }

  private failure(err: unknown): ReplyEvent {
    if (err instanceof InferenceError) {
      if (err.code === 'busy') {
        return { type: 'refused', reason: 'busy', message: err.message, retryAfterMs: err.retryAfterMs };
      }
      return { type: 'failed', code: err.code, message: err.message };
    }
    return { type: 'failed', code: 'internal', message: 'Something went wrong on my side. Please try again.' };
  }

  private async execute(req: CommandRequest, emit: (e: ReplyEvent) => void, onCancel: (c: () => void) => void): Promise<void> {
    const refusal = await this.checkPolicy(req);
    if (refusal) return emit(refusal);

    const invalid = this.validate(req);
    if (invalid) return emit({ type: 'failed', code: 'bad_request', message: invalid });

    // A follow-up with a new image starts a new conversation about that image.
    const command: CommandName = req.command === 'followup' && req.image ? 'describe' : req.command;
    const existing = await this.deps.conversations.get(req.conversationId);

    let job: InferenceJob;
    let conversation: Conversation;
    if (command === 'followup' || command === 'more') {
      if (!existing) {
        return emit({
          type: 'refused',
          reason: 'no_conversation',
          message: 'This conversation has expired. Start a new one with /describe, /ask or /quiz.',
        });
      }
      if (!mayContinue(existing, req.who.userId)) {
        return emit({ type: 'refused', reason: 'not_owner', message: 'Only the person who started this conversation can continue it.' });
      }
      if (command === 'more' && existing.template !== 'v1_sq') {
        return emit({ type: 'failed', code: 'bad_request', message: 'Another question works on quiz conversations only.' });
      }
      conversation = existing;
      job = this.followUpJob(req, existing, command);
    } else {
      const image = req.image!;
      const digest = imageDigest(image.bytes);
      await this.deps.images.put(digest, image.bytes);
      const t = this.now();
      conversation = {
        id: req.conversationId,
        imageDigest: digest,
        template: command === 'quiz' ? 'v1_sq' : 'v1',
        turns: [],
        ownerId: req.who.userId,
        openToAll: this.deps.openConversations ?? true,
        createdAt: t,
        updatedAt: t,
      };
      job = this.newJob(req, command, digest, image.bytes);
    }

    const cacheKey = this.resultKey(job);
    if (cacheKey && this.deps.results) {
      const hit = await this.deps.results.get(cacheKey);
      if (hit) {
        await this.save(conversation, hit);
        const reply = toReply(hit);
        emit({ type: 'done', reply, stats: { tokens: hit.tokens.generated, totalMs: 0, tokensPerSecond: 0, cached: true } });
        return;
      }
    }

    const result = await this.infer(job, conversation, emit, onCancel);
    await this.save(conversation, result);
    if (cacheKey && this.deps.results && result.finishReason !== 'cancelled') await this.deps.results.set(cacheKey, result);
    emit({
      type: 'done',
      reply: toReply(result),
      stats: {
        tokens: result.tokens.generated,
        totalMs: result.timings.totalMs,
        tokensPerSecond: result.timings.tokensPerSecond,
        cached: false,
        worker: result.worker,
      },
    });
  }

  private async checkPolicy(req: CommandRequest): Promise<ReplyEvent | undefined> {
    const access = checkAccess(this.deps.access ?? {}, req.who);
    if (!access.allowed) {
      return { type: 'refused', reason: 'denied', message: `Curio is not enabled for this ${access.reason} here.` };
    }
    const { limiter, limits } = this.deps;
    const user = await limiter.take(`user:${req.who.userId}`, limits.perUser);
    if (!user.allowed) {
      return {
        type: 'refused',
        reason: 'rate_limited',
        message: `You're sending requests too fast. Try again in ${seconds(user.retryAfterMs)} s.`,
        retryAfterMs: user.retryAfterMs,
      };
    }
    const channel = req.who.channelIds?.[req.who.channelIds.length - 1];
    if (channel) {
      const ch = await limiter.take(`channel:${channel}`, limits.perChannel);
      if (!ch.allowed) {
        return {
          type: 'refused',
          reason: 'rate_limited',
          message: `This channel is busy with requests. Try again in ${seconds(ch.retryAfterMs)} s.`,
          retryAfterMs: ch.retryAfterMs,
        };
      }
    }
    return undefined;
  }

  private validate(req: CommandRequest): string | undefined {
    const { limits } = this.deps;
    const needsImage = req.command === 'describe' || req.command === 'ask' || req.command === 'quiz';
    if (needsImage && !req.image) return 'Please attach an image.';
    if (req.image && req.image.bytes.byteLength === 0) return 'That image is empty.';
    const needsText = req.command === 'ask' || (req.command === 'followup' && !req.image);
    const text = req.text?.trim() ?? '';
    if (needsText && !text) return req.command === 'ask' ? 'Please write a question.' : 'Please write a message.';
    if (text.length > limits.maxTextLength) {
      return `That message is too long (${text.length} characters; the limit is ${limits.maxTextLength}).`;
    }
    if (req.rounds !== undefined && (!Number.isInteger(req.rounds) || req.rounds < 1 || req.rounds > limits.maxQuizRounds)) {
      return `The number of questions must be between 1 and ${limits.maxQuizRounds}.`;
    }
    return undefined;
  }

  private newJob(req: CommandRequest, command: 'describe' | 'ask' | 'quiz', digest: string, bytes: Uint8Array): InferenceJob {
    const task: TaskKind = command;
    return {
      id: this.newId(),
      task,
      image: { digest, bytes },
      conversationId: req.conversationId,
      ...(task === 'describe' ? { detail: req.detail ?? 'brief' } : {}),
      ...(task === 'ask' ? { text: req.text!.trim() } : {}),
      ...(task === 'quiz' ? { rounds: req.rounds ?? 3 } : {}),
      ...(req.seed !== undefined ? { seed: req.seed } : {}),
      priority: priorityOf(task, req.rounds),
    };
  }

  private followUpJob(req: CommandRequest, c: Conversation, command: 'followup' | 'more'): InferenceJob {
    const history = { template: c.template, turns: c.turns, ...(c.tokens ? { tokens: c.tokens } : {}) };
    const base = {
      id: this.newId(),
      image: { digest: c.imageDigest },
      conversationId: c.id,
      history,
      ...(req.seed !== undefined ? { seed: req.seed } : {}),
    };
    if (command === 'more') return { ...base, task: 'quiz', rounds: 1, priority: 'batch' };
    return { ...base, task: 'chat', text: req.text!.trim(), priority: 'interactive' };
  }

  /** Deterministic (greedy, new-image) tasks are cached by image digest + task + parameters. */
  private resultKey(job: InferenceJob): string | undefined {
    if (job.history || job.seed !== undefined) return undefined;
    if (job.task === 'describe') return `${job.image.digest}:describe:${job.detail}`;
    if (job.task === 'ask') return `${job.image.digest}:ask:${createHash('sha256').update(job.text ?? '').digest('hex').slice(0, 32)}`;
    return undefined; // quiz questions are sampled
  }

  private async infer(
    job: InferenceJob,
    conversation: Conversation,
    emit: (e: ReplyEvent) => void,
    onCancel: (c: () => void) => void,
  ): Promise<JobResult> {
    // The bytes of a known image are fetched only if the worker lacks its embedding: send them
    // along for follow-ups so no round-trip is needed (they are small next to the model state).
    if (!job.image.bytes) {
      const bytes = await this.deps.images.get(conversation.imageDigest);
      if (bytes) job.image.bytes = bytes;
    }
    const progress = new ProgressBuilder(job.task === 'quiz');
    const handle = this.deps.inference.run(job, (ev: JobEvent) => {
      if (ev.type === 'queued') emit({ type: 'queued', position: ev.position });
      else if (ev.type === 'started') emit({ type: 'started' });
      else if (ev.type === 'token') {
        progress.add(ev.text, ev.part, ev.round);
        emit({ type: 'progress', reply: progress.reply(), part: ev.part });
      }
    });
    onCancel(handle.cancel);
    return handle.result;
  }

  private async save(conversation: Conversation, result: JobResult): Promise<void> {
    conversation.template = result.template;
    conversation.turns = result.turns as Turn[];
    if (result.conversationTokens) conversation.tokens = result.conversationTokens;
    conversation.updatedAt = this.now();
    if (result.worker) conversation.host = result.worker;
    await this.deps.conversations.save(conversation);
  }
}

function priorityOf(task: TaskKind, rounds?: number): Priority {
  // Long quizzes yield to interactive describe/ask/chat.
  return task === 'quiz' && (rounds ?? 3) > 1 ? 'batch' : 'interactive';
}

function toReply(result: JobResult): Reply {
  if (result.task === 'quiz') {
    return { kind: 'quiz', description: result.text, rounds: result.rounds ?? [] };
  }
  return { kind: 'answer', text: result.text };
}

/** Accumulates streamed tokens into the reply so far. */
class ProgressBuilder {
  private text = '';
  private readonly rounds: QuizRoundView[] = [];

  constructor(private readonly isQuiz: boolean) {}

  add(text: string, part?: QuizPart, round?: number): void {
    if (!this.isQuiz || part === undefined || part === 'description') {
      this.text += text;
      return;
    }
    const i = round ?? 0;
    while (this.rounds.length <= i) this.rounds.push({ question: '', answer: '' });
    if (part === 'question') this.rounds[i].question += text;
    else this.rounds[i].answer += text;
  }

  reply(): Reply {
    if (this.isQuiz) return { kind: 'quiz', description: this.text.trim(), rounds: this.rounds.map((r) => ({ question: r.question.trim(), answer: r.answer.trim() })) };
    return { kind: 'answer', text: this.text.trim() };
  }
}
