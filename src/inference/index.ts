/** The inference layer: job/stream contract (types.ts), the local piscina pool, its sizing rule. */
export * from './types';
export { createLocalInference } from './local';
export type { LocalInference, LocalInferenceOptions, LocalInferenceLogger } from './local';
export { planPool } from './sizing';
export type { Sizing, SizingInput } from './sizing';
export type { BatchStats } from './batcher';
