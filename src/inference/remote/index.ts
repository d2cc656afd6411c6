/** Scale-out: the bot-side queue client and the `curio worker` host loop (Redis + BullMQ). */
export { createRemoteInference } from './client';
export type { RemoteInference, RemoteInferenceOptions, RemoteInferenceLogger } from './client';
export { startRemoteWorker, rescueHostQueue } from './worker';
export type { RemoteWorker, RemoteWorkerOptions, RemoteWorkerLogger } from './worker';
export { Keys, SHARED_QUEUE, hostQueue, bullId, hostOfWorker } from './keys';
