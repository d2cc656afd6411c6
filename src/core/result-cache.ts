/**
 * Results of deterministic tasks (greedy describe/ask on a new image) by image digest + task +
 * parameters: the same picture described twice costs one inference.
 */
import type { JobResult } from '../inference/types';

export interface ResultCache {
  get(key: string): Promise<JobResult | undefined>;
  set(key: string, result: JobResult): Promise<void>;
}
