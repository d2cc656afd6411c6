import { Commands, DEFAULT_LIMITS, type CommandRequest, type ReplyEvent } from '../../src/core/commands';
import { InferenceError, type InferenceClient, type InferenceJob, type JobEvent, type JobResult } from '../../src/inference/types';
import { MemoryConversationStore, MemoryImageStore, MemoryRateLimiter, MemoryResultCache } from '../../src/store/memory';

/**
 * Core's policies against a scripted inference client (the real pool and model are exercised
 * in test/inference and the end-to-end tests): what reaches inference, what is refused.
 */
class ScriptedInference implements InferenceClient {
  jobs: InferenceJob[] = [];
  busy = false;
  run(job: InferenceJob, onEvent: (e: JobEvent) => void) {
    this.jobs.push(structuredClone({ ...job, image: { digest: job.image.digest } }));
    if (this.busy) {
      return { result: Promise.reject(new InferenceError('busy', 'Curio is busy right now. Try again in a minute.', 60_000)), cancel() {} };
    }
    onEvent({ type: 'queued', position: 1 });
    onEvent({ type: 'started', worker: 'w0' });
    const words = ['A', ' big', ' red', ' circle', '.'];
    for (const w of words) onEvent({ type: 'token', text: w });
    const prior = job.history?.turns ?? [];
    const q = job.task === 'describe' ? 'Provide a brief description' : job.text ?? '';
    const result: JobResult = {
      task: job.task,
      text: words.join(''),
      finishReason: 'eos',
      template: job.task === 'quiz' ? 'v1_sq' : 'v1',
      turns: [...prior, { role: 'USER', text: q }, { role: 'ASSISTANT', text: words.join('') }],
      tokens: { prompt: 10, generated: 5 },
      timings: { queueMs: 0, imageEncodeMs: 1, firstTokenMs: 2, totalMs: 3, tokensPerSecond: 100 },
      cache: { embedding: false, conversation: false },
      worker: 'w0',
    };
    return { result: Promise.resolve(result), cancel() {} };
  }
  stats() {
    return { queued: 0, running: 0, workers: 1, workerRestarts: 0, cache: { embeddingHits: 0, embeddingMisses: 0, conversationHits: 0, conversationMisses: 0 } };
  }
  async close() {}
}

function setup(overrides: Partial<ConstructorParameters<typeof Commands>[0]> = {}) {
  const inference = new ScriptedInference();
  const conversations = new MemoryConversationStore({ idleTtlMs: 60_000 });
  const commands = new Commands({
    inference,
    conversations,
    images: new MemoryImageStore({ maxBytes: 1 << 20, ttlMs: 60_000 }),
    limiter: new MemoryRateLimiter(),
    results: new MemoryResultCache({ max: 100, ttlMs: 60_000 }),
    limits: DEFAULT_LIMITS,
    ...overrides,
  });
  const run = async (req: Partial<CommandRequest>) => {
    const events: ReplyEvent[] = [];
    await commands.run({ command: 'describe', who: { userId: 'u1', channelIds: ['c1'] }, conversationId: 't1', ...req } as CommandRequest, (e) => events.push(e)).done;
    return events;
  };
  return { inference, conversations, commands, run };
}

const image = { bytes: new Uint8Array([1, 2, 3, 4]) };

describe('Commands', () => {
  it('streams progress then the answer, and stores the conversation', async () => {
    const { run, conversations } = setup();
    const events = await run({ image });
    expect(events.map((e) => e.type)).toEqual(['queued', 'started', 'progress', 'progress', 'progress', 'progress', 'progress', 'done']);
    const progress = events.filter((e) => e.type === 'progress');
    expect(progress[2]).toMatchObject({ reply: { kind: 'answer', text: 'A big red' } });
    expect(events[events.length - 1]).toMatchObject({ type: 'done', reply: { kind: 'answer', text: 'A big red circle.' } });
    const c = await conversations.get('t1');
    expect(c?.turns).toHaveLength(2);
    expect(c?.template).toBe('v1');
  });

  it('a follow-up sends the history and the image digest, not a new image', async () => {
    const { run, inference } = setup();
    await run({ image });
    await run({ command: 'followup', text: 'What color is it?' });
    const job = inference.jobs[1];
    expect(job.task).toBe('chat');
    expect(job.text).toBe('What color is it?');
    expect(job.history?.turns).toHaveLength(2);
    expect(job.image.digest).toBe(inference.jobs[0].image.digest);
  });

  it('a follow-up with a new image starts a new conversation about it', async () => {
    const { run, inference } = setup();
    await run({ image });
    await run({ command: 'followup', image: { bytes: new Uint8Array([9, 9]) } });
    expect(inference.jobs[1].task).toBe('describe');
    expect(inference.jobs[1].image.digest).not.toBe(inference.jobs[0].image.digest);
  });

  it('answers the same greedy describe of the same image from the result cache', async () => {
    const { run, inference } = setup();
    await run({ image, conversationId: 'a' });
    const events = await run({ image, conversationId: 'b' });
    expect(inference.jobs).toHaveLength(1);
    expect(events).toEqual([expect.objectContaining({ type: 'done', stats: expect.objectContaining({ cached: true }) })]);
  });

  it('refuses a rate-limited user with the wait time', async () => {
    const { run } = setup({ limits: { ...DEFAULT_LIMITS, perUser: { capacity: 1, refillPerSecond: 0.1 } } });
    await run({ image, conversationId: 'a' });
    const events = await run({ image, conversationId: 'b' });
    expect(events).toEqual([
      { type: 'refused', reason: 'rate_limited', message: "You're sending requests too fast. Try again in 10 s.", retryAfterMs: expect.any(Number) },
    ]);
    const refused = events[0] as { retryAfterMs: number };
    expect(refused.retryAfterMs).toBeGreaterThan(9_000);
    expect(refused.retryAfterMs).toBeLessThanOrEqual(10_000);
  });

  it('refuses users on the deny list', async () => {
    const { run, inference } = setup({ access: { users: { deny: ['u1'] } } });
    const events = await run({ image });
    expect(events[0]).toMatchObject({ type: 'refused', reason: 'denied' });
    expect(inference.jobs).toHaveLength(0);
  });

  it('turns a full queue into a busy refusal', async () => {
    const { run, inference } = setup();
    inference.busy = true;
    const events = await run({ image });
    expect(events).toEqual([expect.objectContaining({ type: 'refused', reason: 'busy', retryAfterMs: 60_000 })]);
  });

  it.each([
    [{ command: 'describe' as const }, 'Please attach an image.'],
    [{ command: 'ask' as const, image, text: '   ' }, 'Please write a question.'],
    [{ command: 'ask' as const, image, text: 'x'.repeat(1001) }, 'That message is too long (1001 characters; the limit is 1000).'],
    [{ command: 'quiz' as const, image, rounds: 9 }, 'The number of questions must be between 1 and 5.'],
    [{ command: 'describe' as const, image: { bytes: new Uint8Array(0) } }, 'That image is empty.'],
  ])('rejects bad input %#', async (req, message) => {
    const { run, inference } = setup();
    expect(await run(req)).toEqual([{ type: 'failed', code: 'bad_request', message }]);
    expect(inference.jobs).toHaveLength(0);
  });

  it('says when a thread has no (or an expired) conversation', async () => {
    const { run } = setup();
    const events = await run({ command: 'followup', text: 'hello?' });
    expect(events[0]).toMatchObject({ type: 'refused', reason: 'no_conversation' });
  });

  it('keeps other users out of a closed conversation', async () => {
    const { run } = setup({ openConversations: false });
    await run({ image });
    const events = await run({ command: 'followup', text: 'hi', who: { userId: 'u2' } });
    expect(events[0]).toMatchObject({ type: 'refused', reason: 'not_owner' });
  });

  it('"another question" runs one quiz round on the quiz conversation', async () => {
    const { run, inference } = setup();
    await run({ command: 'quiz', image, rounds: 2 });
    await run({ command: 'more' });
    expect(inference.jobs[1]).toMatchObject({ task: 'quiz', rounds: 1, priority: 'batch' });
    expect(inference.jobs[1].history?.template).toBe('v1_sq');
  });
});
