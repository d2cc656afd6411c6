import { planPool } from '../../src/inference/sizing';

describe('planPool', () => {
  it('gives small CPU machines one worker with every core', () => {
    expect(planPool({ cores: 2 })).toMatchObject({ workers: 1, intraOpNumThreads: 2, warnings: [] });
    expect(planPool({ cores: 8 })).toMatchObject({ workers: 1, intraOpNumThreads: 8 });
  });
  it('splits big CPU machines into two workers', () => {
    expect(planPool({ cores: 32 })).toMatchObject({ workers: 2, intraOpNumThreads: 16 });
  });
  it('derives the missing number so workers x threads <= cores', () => {
    expect(planPool({ cores: 8, workers: 3 })).toMatchObject({ workers: 3, intraOpNumThreads: 2 });
    expect(planPool({ cores: 8, intraOpNumThreads: 4 })).toMatchObject({ workers: 2, intraOpNumThreads: 4 });
    expect(planPool({ cores: 2, intraOpNumThreads: 1 })).toMatchObject({ workers: 2, intraOpNumThreads: 1 });
  });
  it('warns when told to oversubscribe', () => {
    const s = planPool({ cores: 4, workers: 4, intraOpNumThreads: 2 });
    expect(s.workers * s.intraOpNumThreads).toBe(8);
    expect(s.warnings[0]).toMatch(/exceeds 4 cores/);
  });
  it('runs one worker per GPU', () => {
    expect(planPool({ cores: 16, device: 'cuda', gpus: 4 })).toMatchObject({ workers: 4, intraOpNumThreads: 4 });
    expect(planPool({ cores: 16, device: 'cuda' })).toMatchObject({ workers: 1 });
  });
  it('refuses nonsense', () => {
    expect(() => planPool({ workers: 0 })).toThrow(/positive integer/);
  });
});
