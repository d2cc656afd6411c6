/**
 * The contract between core and the inference layer: a job goes in, a stream of events comes
 * out. The same types travel over a MessagePort (local piscina pool) and through Redis (remote
 * GPU hosts), so everything here is plain data (structured-clone and JSON safe, except image
 * bytes which are a Uint8Array locally and base64 in Redis).
 */

export type TaskKind = 'describe' | 'ask' | 'quiz' | 'chat';
export type Priority = 'interactive' | 'batch';
export type TemplateName = 'v1' | 'v1_sq';

export interface ConversationTurn {
  role: 'USER' | 'ASSISTANT' | 'VUSER';
  text: string;
}

/** The image a job is about: bytes for a new conversation, or the digest of a known one. */
export interface JobImage {
  /** sha256 hex of the original bytes: the embedding cache key. */
  digest: string;
  /** Present when the worker may not have the embedding cached. */
  bytes?: Uint8Array;
}

export interface InferenceJob {
  id: string;
  task: TaskKind;
  image: JobImage;
  /** Conversation (thread) the job belongs to: its cached state is reused and updated. */
  conversationId: string;
  /** describe: 'brief' | 'detailed'. */
  detail?: 'brief' | 'detailed';
  /** ask: the question; chat: the new user message. */
  text?: string;
  /**
   * quiz: number of self-questioning rounds (default 1). A quiz job that carries `history`
   * (the quiz conversation so far) asks *more* rounds on that conversation ("one more round")
   * instead of starting a new quiz; its result's `text` is then empty and `rounds` holds only
   * the new rounds.
   */
  rounds?: number;
  /**
   * chat: the conversation so far (template + turns), so a worker that lacks the cached state
   * rebuilds it exactly (re-prefill) instead of failing.
   */
  history?: {
    template: TemplateName;
    turns: ConversationTurn[];
    /**
     * Optional (extension): the conversation's token ids as returned in
     * `JobResult.conversationTokens`. With them a rebuild is token-exact; without them the
     * worker re-tokenises the turns' text (equal whenever the text round-trips).
     */
    tokens?: number[];
  };
  seed?: number;
  maxNewTokens?: number;
  priority: Priority;
  /** Epoch ms after which the job is abandoned (cooperatively). */
  deadline?: number;
}

export type QuizPart = 'description' | 'question' | 'answer';

export type JobEvent =
  /** Waiting; `position` 1 = next to run. Sent on enqueue and whenever it changes. */
  | { type: 'queued'; position: number }
  | { type: 'started'; worker: string }
  /** Newly generated text (append to what came before; for quiz, to that part). */
  | { type: 'token'; text: string; part?: QuizPart; round?: number }
  | { type: 'done'; result: JobResult }
  | { type: 'error'; error: JobError };

export type FinishReason = 'eos' | 'length' | 'context' | 'repetition' | 'cancelled';

export interface JobTimings {
  queueMs: number;
  imageEncodeMs: number;
  firstTokenMs: number;
  totalMs: number;
  tokensPerSecond: number;
}

export interface JobResult {
  task: TaskKind;
  /** describe/ask/chat: the answer; quiz: the description. */
  text: string;
  rounds?: Array<{ question: string; answer: string }>;
  finishReason: FinishReason;
  /** The conversation as it now stands (what core stores for follow-ups). */
  template: TemplateName;
  turns: ConversationTurn[];
  /**
   * Extension: every token id of the conversation (the image is one -200 entry). Store it and
   * send it back as `history.tokens` so a worker without the cached state rebuilds it exactly.
   */
  conversationTokens?: number[];
  tokens: { prompt: number; generated: number };
  timings: JobTimings;
  /** Which cache entries were reused (for metrics). */
  cache: { embedding: boolean; conversation: boolean };
  seed?: number;
  /** Host/worker that ran it and now holds the conversation's state. */
  worker: string;
}

export type JobErrorCode =
  | 'busy' // queue full: refused at once
  | 'bad_image' // not an image, corrupt, too big...
  | 'bad_request' // empty prompt, too long, unknown task
  | 'timeout' // deadline passed
  | 'cancelled'
  | 'worker_failed' // worker died twice
  | 'unavailable' // no worker / Redis away
  | 'internal';

export interface JobError {
  code: JobErrorCode;
  /** Short, user-facing. */
  message: string;
  retryAfterMs?: number;
}

export class InferenceError extends Error {
  constructor(
    readonly code: JobErrorCode,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'InferenceError';
  }

  toJSON(): JobError {
    return { code: this.code, message: this.message, ...(this.retryAfterMs !== undefined ? { retryAfterMs: this.retryAfterMs } : {}) };
  }
}

export interface RunHandle {
  /** Resolves with the result or rejects with an InferenceError. */
  result: Promise<JobResult>;
  /** Cooperative: the job stops at its next decode step (or leaves the queue). */
  cancel(): void;
}

/** What core talks to: a local pool or the remote queue. */
export interface InferenceClient {
  run(job: InferenceJob, onEvent: (event: JobEvent) => void): RunHandle;
  stats(): InferenceStats;
  close(): Promise<void>;
}

export interface InferenceStats {
  queued: number;
  running: number;
  workers: number;
  workerRestarts: number;
  cache: { embeddingHits: number; embeddingMisses: number; conversationHits: number; conversationMisses: number };
  /** Extension (local pool): bytes held by the caches. */
  cacheBytes?: { embeddings: number; conversations: number };
  /** Extension (local pool): continuous-batching decode steps over all workers. */
  batches?: { steps: number; sequences: number; maxBatch: number; histogram: Record<number, number> };
}
