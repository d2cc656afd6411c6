/**
 * Pillow's `Image.resize` for 8-bit RGB images, reimplemented so the engine's pixels equal the
 * Python preprocessing bit for bit (SQ-LLaVA was trained on images resized by PIL through
 * CLIPImageProcessor; libvips' kernels differ by a few grey levels). Mirrors Pillow's
 * `libImaging/Resample.c`: separable, antialiased (support grows with the downscale factor),
 * coefficients normalised then converted to 22-bit fixed point, horizontal pass first, each pass
 * rounded and clipped to 8 bits.
 */

export type ResampleFilter = 'bicubic' | 'bilinear' | 'nearest';

const PRECISION_BITS = 32 - 8 - 2;

interface Filter {
  support: number;
  fn(x: number): number;
}

const FILTERS: Record<Exclude<ResampleFilter, 'nearest'>, Filter> = {
  bilinear: {
    support: 1,
    fn(x) {
      if (x < 0) x = -x;
      return x < 1 ? 1 - x : 0;
    },
  },
  bicubic: {
    support: 2,
    fn(x) {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
};

interface Coeffs {
  ksize: number;
  bounds: Int32Array; // [xmin, count] per output pixel
  kk: Int32Array; // fixed-point coefficients, ksize per output pixel
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`. */
function precompute(inSize: number, outSize: number, filter: Filter): Coeffs {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    // C's (int) cast truncates towards zero; the clamp to 0 makes that the same as floor here.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const w = x < xmax ? (ww !== 0 ? k[x] / ww : k[x]) : 0;
      // Pillow rounds half away from zero: (int)(w * 2^22 + (w < 0 ? -0.5 : 0.5)).
      kk[xx * ksize + x] = Math.trunc(w * (1 << PRECISION_BITS) + (w < 0 ? -0.5 : 0.5));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Resizes interleaved 8-bit RGB (`channels` per pixel) from w×h to ow×oh. */
export function resizeRgb8(
  src: Uint8Array,
  w: number,
  h: number,
  ow: number,
  oh: number,
  filterName: ResampleFilter,
  channels = 3,
): Uint8Array {
  if (ow === w && oh === h) return src.slice();
  if (filterName === 'nearest') return resizeNearest(src, w, h, ow, oh, channels);
  const filter = FILTERS[filterName];
  const C = channels;
  const init = 1 << (PRECISION_BITS - 1);

  // Horizontal pass (only the rows the vertical pass reads, as Pillow does).
  let cur = src;
  let curW = w;
  const vert = oh !== h ? precompute(h, oh, filter) : null;
  let yFirst = 0;
  let yLast = h;
  if (vert) {
    yFirst = vert.bounds[0];
    yLast = vert.bounds[(oh - 1) * 2] + vert.bounds[(oh - 1) * 2 + 1];
  }
  if (ow !== w) {
    const hc = precompute(w, ow, filter);
    const rows = yLast - yFirst;
    const out = new Uint8Array(ow * rows * C);
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + yFirst) * w * C;
      const rowOut = y * ow * C;
      for (let xx = 0; xx < ow; xx++) {
        const xmin = hc.bounds[xx * 2];
        const xmax = hc.bounds[xx * 2 + 1];
        const kOff = xx * hc.ksize;
        for (let c = 0; c < C; c++) {
          let ss = init;
          for (let x = 0; x < xmax; x++) ss += src[rowIn + (x + xmin) * C + c] * hc.kk[kOff + x];
          out[rowOut + xx * C + c] = clip8(ss);
        }
      }
    }
    cur = out;
    curW = ow;
    if (vert) {
      // Row indices of the vertical pass are relative to yFirst now.
      for (let i = 0; i < oh; i++) vert.bounds[i * 2] -= yFirst;
    }
  }
  if (!vert) return cur === src ? src.slice() : cur;

  const out = new Uint8Array(ow * oh * C);
  const stride = curW * C;
  for (let yy = 0; yy < oh; yy++) {
    const ymin = vert.bounds[yy * 2];
    const ymax = vert.bounds[yy * 2 + 1];
    const kOff = yy * vert.ksize;
    for (let xx = 0; xx < curW; xx++) {
      for (let c = 0; c < C; c++) {
        let ss = init;
        for (let y = 0; y < ymax; y++) ss += cur[(y + ymin) * stride + xx * C + c] * vert.kk[kOff + y];
        out[yy * curW * C + xx * C + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** Pillow's NEAREST resize: source pixel floor((x + 0.5) * scale). */
function resizeNearest(src: Uint8Array, w: number, h: number, ow: number, oh: number, C: number): Uint8Array {
  const out = new Uint8Array(ow * oh * C);
  const sx = w / ow;
  const sy = h / oh;
  for (let y = 0; y < oh; y++) {
    const iy = Math.min(h - 1, Math.floor((y + 0.5) * sy));
    for (let x = 0; x < ow; x++) {
      const ix = Math.min(w - 1, Math.floor((x + 0.5) * sx));
      for (let c = 0; c < C; c++) out[(y * ow + x) * C + c] = src[(iy * w + ix) * C + c];
    }
  }
  return out;
}
