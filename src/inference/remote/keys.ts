/**
 * Redis names shared by the bot-side client (client.ts) and `curio worker` hosts (worker.ts).
 *
 * BullMQ queues (keys `<prefix>:<queue>:…`):
 *   jobs              the shared queue every host consumes
 *   jobs.host.<id>    one host's own queue (follow-ups routed to the host holding the state)
 * Plain keys:
 *   <prefix>:ev:<jobId>        Redis Stream of the job's events (fields a = attempt, e = JSON JobEvent)
 *   <prefix>:img:<digest>      image bytes (TTL), so a retried or rescued job still has them
 *   <prefix>:route:<jobId>     the queue the job sits in (changes when a dead host's job is rescued)
 *   <prefix>:att:<jobId>       attempt counter (INCR by the host that starts it)
 *   <prefix>:cancel:<jobId>    '1' cancel / '2' deadline; also published on <prefix>:cancel
 *   <prefix>:host:<id>         heartbeat (TTL); <prefix>:hosts the set of known host ids
 *   <prefix>:affinity:<conv>   host id that last ran the conversation (TTL)
 */
import type { InferenceJob, Priority } from '../types';

export const SHARED_QUEUE = 'jobs';

/** BullMQ's bounds on ids and names: no ':' and never an integer. */
export function safeName(s: string): string {
  return encodeURIComponent(s).replace(/\./g, '%2E');
}

export function hostQueue(hostId: string): string {
  return `jobs.host.${safeName(hostId)}`;
}

/** BullMQ job id for an inference job id (ids may contain ':'). */
export function bullId(jobId: string): string {
  return `j.${safeName(jobId)}`;
}

export const PRIORITY: Record<Priority, number> = { interactive: 1, batch: 10 };

export class Keys {
  constructor(readonly prefix: string) {}
  events(jobId: string): string {
    return `${this.prefix}:ev:${jobId}`;
  }
  image(digest: string): string {
    return `${this.prefix}:img:${digest}`;
  }
  route(jobId: string): string {
    return `${this.prefix}:route:${jobId}`;
  }
  attempt(jobId: string): string {
    return `${this.prefix}:att:${jobId}`;
  }
  cancel(jobId: string): string {
    return `${this.prefix}:cancel:${jobId}`;
  }
  get cancelChannel(): string {
    return `${this.prefix}:cancel`;
  }
  heartbeat(hostId: string): string {
    return `${this.prefix}:host:${hostId}`;
  }
  get hosts(): string {
    return `${this.prefix}:hosts`;
  }
  affinity(conversationId: string): string {
    return `${this.prefix}:affinity:${conversationId}`;
  }
  /** A BullMQ key of a queue (same layout as BullMQ's QueueKeys). */
  queueKey(queue: string, suffix: string): string {
    return `${this.prefix}:${queue}:${suffix}`;
  }
}

/** What a BullMQ job carries: the inference job without its bytes (those live under image()). */
export interface QueuedJob {
  job: InferenceJob;
  /** Bytes were stored under Keys.image(job.image.digest). */
  image: boolean;
  /** Bot-side resubmissions after the job vanished from Redis. */
  resubmits?: number;
}

/** The host id inside a worker label `<host>/w<n>` (JobResult.worker, 'started' events). */
export function hostOfWorker(worker: string): string {
  const i = worker.lastIndexOf('/');
  return i > 0 ? worker.slice(0, i) : worker;
}
