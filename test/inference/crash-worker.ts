/**
 * Test worker: the real inference worker, plus jobs that kill it. Text `__exit__` /
 * `__exit_once__` (first attempt only) call process.exit; `__throw_once__` throws outside any
 * task (an uncaught error in a timer), as a crash or out-of-memory would.
 */
import type { WorkerRequest } from '../../src/inference/protocol';
import inferenceWorker from '../../workers/inference-worker';

export default async function crashWorker(req: WorkerRequest): Promise<unknown> {
  if (req.kind === 'job') {
    const t = req.job.text ?? '';
    if (t === '__exit__' || (t === '__exit_once__' && req.attempt === 1)) process.exit(3);
    if (t === '__throw_once__' && req.attempt === 1) {
      setTimeout(() => {
        throw new Error('boom outside a task');
      }, 5);
      return new Promise(() => {});
    }
  }
  return inferenceWorker(req);
}
