/**
 * Typed errors of the engine. Each carries a stable `code` so callers (core, adapters) can map
 * it to a user-facing reply without parsing messages, and a message that names the problem for
 * the operator's logs.
 */

export type BundleErrorCode =
  | 'missing_file'
  | 'bad_manifest'
  | 'bad_dtype'
  | 'graph_mismatch'
  | 'session_failed'
  | 'tokenizer_mismatch';

/** The model bundle is unusable; raised at load time, never at the first request. */
export class BundleError extends Error {
  override readonly name = 'BundleError';
  constructor(
    readonly code: BundleErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export type ImageErrorCode =
  | 'empty'
  | 'too_large_bytes'
  | 'unsupported_format'
  | 'corrupt'
  | 'too_many_pixels'
  | 'too_small';

/**
 * The uploaded file cannot be used as an image. `message` is short and safe to show to the
 * user as is; `detail` keeps the decoder's own words for the logs.
 */
export class ImageError extends Error {
  override readonly name = 'ImageError';
  constructor(
    readonly code: ImageErrorCode,
    message: string,
    readonly detail?: string,
  ) {
    super(message);
  }
}

export type GenerationErrorCode = 'context_full' | 'bad_request' | 'runtime';

/** A request the loaded model cannot serve (prompt too long for the context, bad arguments). */
export class GenerationError extends Error {
  override readonly name = 'GenerationError';
  constructor(
    readonly code: GenerationErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
