import { splitReply } from '../../src/core/split-reply';

describe('splitReply', () => {
  it('keeps a short answer whole', () => {
    expect(splitReply('A big red circle.', { limit: 2000 })).toEqual(['A big red circle.']);
  });

  it('splits at sentence boundaries under the limit without losing text', () => {
    const sentence = 'There is a big red circle at the top left of the picture. ';
    const text = sentence.repeat(100).trim();
    const parts = splitReply(text, { limit: 500 });
    expect(parts.length).toBeGreaterThan(1);
    for (const p of parts) {
      expect(p.length).toBeLessThanOrEqual(500);
      expect(p.endsWith('picture.')).toBe(true);
    }
    expect(parts.join(' ')).toBe(text);
  });

  it('prefers paragraph breaks over sentence breaks', () => {
    const para = 'word '.repeat(50).trim() + '.';
    const text = `${para}\n\n${para}\n\n${para}`;
    const parts = splitReply(text, { limit: 600 });
    expect(parts[0]).toBe(`${para}\n\n${para}`);
    expect(parts[1]).toBe(para);
  });

  it('never breaks a word when a space is available', () => {
    const text = Array.from({ length: 400 }, (_, i) => `token${i}`).join(' ');
    const parts = splitReply(text, { limit: 100 });
    const words = parts.flatMap((p) => p.split(' '));
    expect(words).toEqual(text.split(' '));
  });

  it('closes and reopens a code block cut in two, keeping its language', () => {
    const code = Array.from({ length: 60 }, (_, i) => `const x${i} = ${i};`).join('\n');
    const text = `Here is code:\n\`\`\`ts\n${code}\n\`\`\`\nDone.`;
    const parts = splitReply(text, { limit: 400 });
    expect(parts.length).toBeGreaterThan(2);
    for (const p of parts) {
      expect(p.length).toBeLessThanOrEqual(400);
      const fences = p.split('\n').filter((l) => l.startsWith('```')).length;
      expect(fences % 2).toBe(0); // every part renders its code block closed
    }
    expect(parts[1].startsWith('```ts\n')).toBe(true);
    expect(parts[parts.length - 1].endsWith('Done.')).toBe(true);
  });

  it('never splits a surrogate pair or an emoji sequence in a hard cut', () => {
    const text = '👍🏽'.repeat(300); // no spaces: forces hard cuts
    const parts = splitReply(text, { limit: 101 });
    for (const p of parts) {
      expect(p.length).toBeLessThanOrEqual(101);
      expect(p).not.toMatch(/[\ud800-\udbff]$/); // no lone high surrogate at the end
      expect(p).not.toMatch(/^[\udc00-\udfff]/);
      expect(p.replace(/👍🏽/gu, '')).toBe(''); // whole emoji+modifier sequences only
    }
    expect(parts.join('')).toBe(text);
  });

  it('rejects absurd limits', () => {
    expect(() => splitReply('x', { limit: 5 })).toThrow(RangeError);
  });
});
