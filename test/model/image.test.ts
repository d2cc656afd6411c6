/** Image preprocessing on awkward and hostile inputs, generated with sharp in the test. */
import sharp from 'sharp';
import type { Color } from 'sharp';
import * as zlib from 'node:zlib';

import { decodeImage, expandToSquare, ImageError, ImageSpec, padColour, preprocessImage } from '../../src/model';

const SPEC: ImageSpec = {
  size: 56,
  mean: [0.48145466, 0.4578275, 0.40821073],
  std: [0.26862954, 0.26130258, 0.27577711],
  resample: 'bicubic',
  pad: 'square-mean',
  crop: 'center',
  num_tokens: 16,
};

async function expectImageError(p: Promise<unknown>, code: string): Promise<ImageError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).code).toBe(code);
    // user-facing: short, one sentence, no stack or library names
    expect((err as ImageError).message.length).toBeLessThan(120);
    return err as ImageError;
  }
  throw new Error(`expected ImageError ${code}`);
}

const solid = (w: number, h: number, background: Color, channels: 3 | 4 = 3) =>
  sharp({ create: { width: w, height: h, channels, background } });

function pixelAt(img: { data: Uint8Array; width: number }, x: number, y: number): number[] {
  const i = (y * img.width + x) * 3;
  return [img.data[i], img.data[i + 1], img.data[i + 2]];
}

/** A PNG whose header claims w×h pixels (no pixel data: never decoded). */
function pngHeaderOnly(w: number, h: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(td) >>> 0);
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(Buffer.alloc(10))), chunk('IEND', Buffer.alloc(0))]);
}

describe('decoding', () => {
  test('PNG with alpha: alpha dropped like PIL convert("RGB"), or flattened onto white', async () => {
    const png = await solid(40, 30, { r: 255, g: 0, b: 0, alpha: 0 }, 4).png().toBuffer();
    const dropped = await decodeImage(png);
    expect(pixelAt(dropped, 5, 5)).toEqual([255, 0, 0]);
    const white = await decodeImage(png, { alpha: 'white' });
    expect(pixelAt(white, 5, 5)).toEqual([255, 255, 255]);
  });

  test('CMYK JPEG → sRGB', async () => {
    const jpg = await solid(32, 32, { r: 20, g: 60, b: 200 }).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer();
    expect((await sharp(jpg).metadata()).space).toBe('cmyk');
    const img = await decodeImage(jpg);
    const [r, g, b] = pixelAt(img, 16, 16);
    // CMYK round trips lose some gamut; the colour must still read as blue.
    expect(b).toBeGreaterThan(r + 60);
    expect(b).toBeGreaterThan(g + 40);
  });

  test('16-bit PNG → 8-bit', async () => {
    const png = await solid(20, 20, { r: 200, g: 100, b: 50 }).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(png).metadata()).depth).toBe('ushort');
    const img = await decodeImage(png);
    expect(img.data.length).toBe(20 * 20 * 3);
    pixelAt(img, 3, 3).forEach((v, i) => expect(Math.abs(v - [200, 100, 50][i])).toBeLessThanOrEqual(1));
  });

  test('greyscale → three equal channels', async () => {
    const png = await sharp(Buffer.alloc(24 * 24, 90), { raw: { width: 24, height: 24, channels: 1 } }).toColourspace('b-w').png().toBuffer();
    expect((await sharp(png).metadata()).channels).toBe(1);
    const img = await decodeImage(png);
    expect(pixelAt(img, 1, 1)).toEqual([90, 90, 90]);
  });

  test('EXIF orientation is applied', async () => {
    const jpg = await solid(40, 20, { r: 10, g: 200, b: 10 }).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    expect((await sharp(jpg).metadata()).orientation).toBe(6);
    const img = await decodeImage(jpg);
    expect([img.width, img.height]).toEqual([20, 40]);
  });

  test.each(['gif', 'webp'] as const)('animated %s → first frame', async (fmt) => {
    const red = await solid(16, 12, { r: 255, g: 0, b: 0 }).png().toBuffer();
    const green = await solid(16, 12, { r: 0, g: 255, b: 0 }).png().toBuffer();
    const anim = await sharp([red, green], { join: { animated: true } })[fmt]({ loop: 0 }).toBuffer();
    expect((await sharp(anim).metadata()).pages).toBe(2);
    const img = await decodeImage(anim);
    expect([img.width, img.height]).toEqual([16, 12]);
    const [r, g] = pixelAt(img, 8, 6);
    expect(r).toBeGreaterThan(200);
    expect(g).toBeLessThan(60);
  });

  test('corrupt bytes', async () => {
    const noise = Buffer.from(Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 7919) % 251));
    const png = await sharp(noise, { raw: { width: 64, height: 64, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
    await expectImageError(decodeImage(png.subarray(0, Math.floor(png.length / 2))), 'corrupt');
    const jpg = await sharp(noise, { raw: { width: 64, height: 64, channels: 3 } }).jpeg().toBuffer();
    await expectImageError(decodeImage(jpg.subarray(0, 200)), 'corrupt');
  });

  test('a text file, an SVG and an empty file are refused', async () => {
    await expectImageError(decodeImage(Buffer.from('hello, this is not an image\n')), 'unsupported_format');
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><rect width="40" height="40"/></svg>');
    await expectImageError(decodeImage(svg), 'unsupported_format');
    await expectImageError(decodeImage(new Uint8Array(0)), 'empty');
  });

  test('1x1 is too small by default, usable when allowed', async () => {
    const png = await solid(1, 1, { r: 1, g: 2, b: 3 }).png().toBuffer();
    await expectImageError(decodeImage(png), 'too_small');
    const p = await preprocessImage(png, SPEC, { minSide: 1 });
    expect(p.pixels.length).toBe(3 * 56 * 56);
    expect(p.pixels.every(Number.isFinite)).toBe(true);
  });

  test('huge dimensions are refused from the header, before decoding', async () => {
    const t0 = Date.now();
    const err = await expectImageError(decodeImage(pngHeaderOnly(100_000, 100_000)), 'too_many_pixels');
    expect(err.message).toMatch(/too big|too many/);
    expect(Date.now() - t0).toBeLessThan(2000);
    const png = await solid(40, 30, { r: 0, g: 0, b: 0 }).png().toBuffer();
    await expectImageError(decodeImage(png, { maxPixels: 1000 }), 'too_many_pixels');
  });

  test('too many bytes', async () => {
    const png = await solid(40, 30, { r: 0, g: 0, b: 0 }).png().toBuffer();
    await expectImageError(decodeImage(png, { maxBytes: 10 }), 'too_large_bytes');
  });
});

describe('geometry and normalisation', () => {
  test('expand2square centres with int(mean*255), offset (w-h)//2', () => {
    const fill = padColour(SPEC.mean);
    expect(fill).toEqual([122, 116, 104]);
    const img = { data: new Uint8Array(5 * 2 * 3).fill(255), width: 5, height: 2, format: 'png' };
    const sq = expandToSquare(img, fill);
    expect([sq.width, sq.height]).toEqual([5, 5]);
    const rows = [0, 1, 2, 3, 4].map((y) => pixelAt(sq, 0, y)[0]);
    expect(rows).toEqual([122, 255, 255, 122, 122]);
  });

  test('preprocessImage returns CHW float32, a digest and the oriented size', async () => {
    const png = await solid(30, 10, { r: 255, g: 255, b: 255 }).png().toBuffer();
    const p = await preprocessImage(png, SPEC);
    expect(p.dims).toEqual([1, 3, 56, 56]);
    expect([p.width, p.height, p.format]).toEqual([30, 10, 'png']);
    expect(p.digest).toMatch(/^[0-9a-f]{64}$/);
    // Centre row is white: (1 - mean)/std per channel.
    const centre = 28 * 56 + 28;
    for (let c = 0; c < 3; c++) expect(p.pixels[c * 56 * 56 + centre]).toBeCloseTo((1 - SPEC.mean[c]) / SPEC.std[c], 5);
    // Top row is padding.
    expect(p.pixels[0]).toBeCloseTo((122 / 255 - SPEC.mean[0]) / SPEC.std[0], 5);
  });
});
