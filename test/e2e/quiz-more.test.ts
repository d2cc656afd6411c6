import sharp from 'sharp';
import { continueQuiz, Engine } from '../../src/model';
import { BUNDLED_MODEL } from '../support/model';

/**
 * "Another question" on the bundled model: more rounds on an existing quiz never ask what an
 * earlier round of the same conversation asked (a repeat is sampled again). Without that, at
 * least one of seeds 1-6 repeats a question on this scene (measured).
 */
it('one more round asks something not asked before in the conversation', async () => {
  const engine = await Engine.load(BUNDLED_MODEL, { intraOpNumThreads: 1 });
  try {
    // one big yellow star on black: few distinct questions, so repeats are likely
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"><rect width="300" height="300" fill="#000"/>
      <polygon transform="translate(150 150) scale(1.7)" fill="#f0d020" points="0,-40 9.4,-12.9 38,-12.4 15.2,4.9 23.5,32.4 0,16 -23.5,32.4 -15.2,4.9 -38,-12.4 -9.4,-12.9"/></svg>`;
    const image = await engine.prepareImage(new Uint8Array(await sharp(Buffer.from(svg)).png().toBuffer()));
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const first = await engine.quiz(image, { rounds: 2, seed });
      const more = await continueQuiz(engine.context, first.sequence, { rounds: 3, seed: seed + 1 });
      const questions = [...first.rounds, ...more.rounds].map((r) => r.question.toLowerCase());
      expect(new Set(questions).size).toBe(questions.length);
    }
  } finally {
    await engine.release();
  }
}, 120_000);
