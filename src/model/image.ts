/**
 * Image preprocessing: untrusted bytes → the normalised CHW float tensor the vision graph takes.
 *
 * Decoding (sharp/libvips) handles the messy part — EXIF orientation, first frame of animations,
 * CMYK / 16-bit / grey / palette → 8-bit sRGB — and refuses hostile input early (byte cap, pixel
 * cap checked from the header before decoding). The geometry and arithmetic after decoding copy
 * the Python side exactly (LLaVA's `expand2square` + CLIPImageProcessor): pad to a square with
 * the mean colour, resize with Pillow's resampler (see resample.ts), rescale and normalise as
 * numpy does.
 */
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import type { Metadata, SharpOptions } from 'sharp';

import { ImageError } from './errors';
import type { ImageSpec } from './manifest';
import { resizeRgb8 } from './resample';

export interface ImageLimits {
  /** Refuse files larger than this many bytes. Default 20 MiB. */
  maxBytes?: number;
  /** Refuse images with more pixels than this (checked from the header). Default 40 M. */
  maxPixels?: number;
  /** Refuse images whose longer side is below this. Default 8 px. */
  minSide?: number;
  /**
   * What to do with transparency: `drop` ignores the alpha channel as PIL's `convert('RGB')`
   * (the training preprocessing) does; `white` composites onto white first.
   */
  alpha?: 'drop' | 'white';
}

export const DEFAULT_IMAGE_LIMITS: Required<ImageLimits> = {
  maxBytes: 20 * 1024 * 1024,
  maxPixels: 40_000_000,
  minSide: 8,
  alpha: 'drop',
};

/** Formats accepted from users; SVG/PDF and other vector or exotic loaders are refused. */
const ALLOWED_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif', 'heif', 'bmp']);

export interface PreparedImage {
  /** Normalised pixels, CHW, length 3·S·S. */
  pixels: Float32Array;
  dims: [1, 3, number, number];
  /** Size of the decoded, oriented image. */
  width: number;
  height: number;
  format: string;
  /** sha256 of the input bytes (hex), the key of the image-embedding cache. */
  digest: string;
}

/** Decoded, oriented 8-bit RGB. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
  format: string;
}

function sizeText(n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

/** Decodes untrusted bytes to 8-bit sRGB, or throws an `ImageError` with a user-facing message. */
export async function decodeImage(bytes: Uint8Array, limits: ImageLimits = {}): Promise<RgbImage> {
  const lim = { ...DEFAULT_IMAGE_LIMITS, ...limits };
  if (!bytes || bytes.length === 0) throw new ImageError('empty', 'The file is empty.');
  if (bytes.length > lim.maxBytes) {
    throw new ImageError('too_large_bytes', `The file is too large (${sizeText(bytes.length)}; the limit is ${sizeText(lim.maxBytes)}).`);
  }
  const input = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // pages:1 = first frame only; limitInputPixels is libvips' own guard (decompression bombs).
  const opts: SharpOptions = { pages: 1, page: 0, limitInputPixels: lim.maxPixels, failOn: 'error' };

  let meta: Metadata;
  try {
    meta = await sharp(input, opts).metadata();
  } catch (err) {
    const msg = (err as Error).message;
    if (/unsupported image format/i.test(msg)) {
      throw new ImageError('unsupported_format', 'That file is not an image I can read (use JPEG, PNG, WebP or GIF).', msg);
    }
    if (/pixel limit/i.test(msg)) throw new ImageError('too_many_pixels', 'The image has too many pixels.', msg);
    throw new ImageError('corrupt', 'The image file looks damaged and cannot be decoded.', msg);
  }
  const format = meta.format ?? 'unknown';
  if (!ALLOWED_FORMATS.has(format)) {
    throw new ImageError('unsupported_format', `Images in ${format.toUpperCase()} format are not supported (use JPEG, PNG, WebP or GIF).`, format);
  }
  const w = meta.width ?? 0;
  const h = meta.pageHeight ?? meta.height ?? 0;
  if (w * h > lim.maxPixels) {
    throw new ImageError(
      'too_many_pixels',
      `The image is too big (${w}×${h} pixels; the limit is ${(lim.maxPixels / 1e6).toFixed(0)} megapixels).`,
      `${w}x${h}`,
    );
  }
  if (w === 0 || h === 0) throw new ImageError('empty', 'The image has no pixels.');
  if (Math.max(w, h) < lim.minSide) {
    throw new ImageError('too_small', `The image is too small (${w}×${h} pixels).`, `${w}x${h}`);
  }

  try {
    let pipeline = sharp(input, opts).rotate(); // EXIF auto-orient
    pipeline = lim.alpha === 'white' ? pipeline.flatten({ background: '#ffffff' }) : pipeline.removeAlpha();
    const { data, info } = await pipeline
      .toColourspace('srgb') // CMYK (via ICC), grey, 16-bit → 8-bit sRGB
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) {
      throw new Error(`decoder produced ${info.channels} channels`);
    }
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height, format };
  } catch (err) {
    if (err instanceof ImageError) throw err;
    const msg = (err as Error).message;
    if (/pixel limit/i.test(msg)) throw new ImageError('too_many_pixels', 'The image has too many pixels.', msg);
    throw new ImageError('corrupt', 'The image file looks damaged and cannot be decoded.', msg);
  }
}

/**
 * The padding colour of `expand2square`: `int(mean·255)` per channel — truncated, as the
 * reference training code does ((122, 116, 104) for the CLIP mean; training/sqllava/image.py).
 */
export function padColour(mean: readonly number[]): [number, number, number] {
  return [Math.trunc(mean[0] * 255), Math.trunc(mean[1] * 255), Math.trunc(mean[2] * 255)];
}

/**
 * LLaVA's `expand2square`: centre the image on a square canvas of the mean colour, at offset
 * (side − short)//2 as PIL's paste does.
 */
export function expandToSquare(img: RgbImage, fill: readonly number[]): RgbImage {
  const { width: w, height: h } = img;
  if (w === h) return img;
  const side = Math.max(w, h);
  const out = new Uint8Array(side * side * 3);
  for (let i = 0; i < side * side; i++) {
    out[i * 3] = fill[0];
    out[i * 3 + 1] = fill[1];
    out[i * 3 + 2] = fill[2];
  }
  const ox = w < side ? Math.floor((side - w) / 2) : 0;
  const oy = h < side ? Math.floor((side - h) / 2) : 0;
  for (let y = 0; y < h; y++) {
    out.set(img.data.subarray(y * w * 3, (y + 1) * w * 3), ((y + oy) * side + ox) * 3);
  }
  return { ...img, data: out, width: side, height: side };
}

/**
 * CLIPImageProcessor geometry: resize the shortest edge to S (the longer one to
 * int(S·long/short)), then centre-crop S×S.
 */
export function resizeAndCrop(img: RgbImage, spec: Pick<ImageSpec, 'size' | 'resample'>): RgbImage {
  const S = spec.size;
  const { width: w, height: h } = img;
  const short = Math.min(w, h);
  const long = Math.max(w, h);
  const longOut = Math.max(S, Math.trunc((S * long) / short));
  const [rw, rh] = w <= h ? [S, longOut] : [longOut, S];
  const resized = resizeRgb8(img.data, w, h, rw, rh, spec.resample);
  if (rw === S && rh === S) return { ...img, data: resized, width: S, height: S };
  const top = Math.floor((rh - S) / 2);
  const left = Math.floor((rw - S) / 2);
  const out = new Uint8Array(S * S * 3);
  for (let y = 0; y < S; y++) {
    out.set(resized.subarray(((y + top) * rw + left) * 3, ((y + top) * rw + left + S) * 3), y * S * 3);
  }
  return { ...img, data: out, width: S, height: S };
}

/**
 * HWC uint8 → CHW float32, `(v/255 − mean)/std` computed in float64 and rounded once to float32,
 * as the Python reference (training/sqllava/image.py) does. A 256-entry table per channel makes
 * this both exact and cheap.
 */
export function normalizeToChw(img: RgbImage, mean: readonly number[], std: readonly number[]): Float32Array {
  const { width: w, height: h, data } = img;
  const plane = w * h;
  const out = new Float32Array(3 * plane);
  const lut = [0, 1, 2].map((c) => {
    const t = new Float32Array(256);
    for (let v = 0; v < 256; v++) t[v] = (v / 255 - mean[c]) / std[c];
    return t;
  });
  for (let i = 0; i < plane; i++) {
    out[i] = lut[0][data[i * 3]];
    out[plane + i] = lut[1][data[i * 3 + 1]];
    out[2 * plane + i] = lut[2][data[i * 3 + 2]];
  }
  return out;
}

/** Geometry + normalisation of an already decoded image, as the model expects it. */
export function pixelsFromRgb(img: RgbImage, spec: ImageSpec): Float32Array {
  const square = spec.pad === 'square-mean' ? expandToSquare(img, padColour(spec.mean)) : img;
  return normalizeToChw(resizeAndCrop(square, spec), spec.mean, spec.std);
}

/** Untrusted bytes → model input. Throws `ImageError` for anything unusable. */
export async function preprocessImage(bytes: Uint8Array, spec: ImageSpec, limits: ImageLimits = {}): Promise<PreparedImage> {
  const img = await decodeImage(bytes, limits);
  const pixels = pixelsFromRgb(img, spec);
  return {
    pixels,
    dims: [1, 3, spec.size, spec.size],
    width: img.width,
    height: img.height,
    format: img.format,
    digest: createHash('sha256').update(bytes).digest('hex'),
  };
}
