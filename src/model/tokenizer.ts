/**
 * The bundle's Hugging Face `tokenizer.json`, read from disk with @huggingface/tokenizers (pure
 * JS, no network). Adds the LLaVA prompt split on `<image>` and a streaming decoder that never
 * emits half a character.
 */
import { promises as fs } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';

import { BundleError } from './errors';

/** Placeholder id for the image in token lists (LLaVA's IMAGE_TOKEN_INDEX, not in the vocabulary). */
export const IMAGE_TOKEN_INDEX = -200;

export interface TokenizerSpec {
  bos_token_id: number;
  eos_token_id: number;
  unk_token_id: number;
  image_token: string;
}

/** A prompt split for the model: text token ids, and where the image embeddings go. */
export type PromptPiece = { kind: 'text'; ids: number[] } | { kind: 'image' };

export class TextTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly imageToken: string;

  private constructor(
    private readonly tok: Tokenizer,
    spec: TokenizerSpec,
    readonly vocabSize: number,
  ) {
    this.bosId = spec.bos_token_id;
    this.eosId = spec.eos_token_id;
    this.unkId = spec.unk_token_id;
    this.imageToken = spec.image_token;
  }

  /** Loads `tokenizer.json` (and `tokenizer_config.json` next to it when present). */
  static async load(file: string, spec: TokenizerSpec): Promise<TextTokenizer> {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(await fs.readFile(file, 'utf8'));
    } catch (err) {
      throw new BundleError('missing_file', `cannot read tokenizer ${file}: ${(err as Error).message}`, { cause: err });
    }
    let config: Record<string, unknown> = {};
    try {
      config = JSON.parse(await fs.readFile(file.replace(/tokenizer\.json$/, 'tokenizer_config.json'), 'utf8'));
    } catch {
      // optional: tokenizer.json alone fully defines LLaMA's tokenisation
    }
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json, config);
    } catch (err) {
      throw new BundleError('tokenizer_mismatch', `cannot build tokenizer from ${file}: ${(err as Error).message}`, { cause: err });
    }
    const vocab = tok.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    const t = new TextTokenizer(tok, spec, maxId + 1);
    // The ids model.json relies on must be what the vocabulary says.
    for (const [field, id] of [['bos_token_id', spec.bos_token_id], ['eos_token_id', spec.eos_token_id]] as const) {
      if (tok.id_to_token(id) === undefined) {
        throw new BundleError('tokenizer_mismatch', `tokenizer ${file} has no token with ${field}=${id}`);
      }
    }
    return t;
  }

  /** Token ids of `text`; `bos` prepends the BOS id (the tokenizer's own post-processor is not used). */
  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    const ids = text.length ? this.tok.encode(text, { add_special_tokens: false }).ids : [];
    return opts.bos ? [this.bosId, ...ids] : ids;
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    const real = ids.filter((id) => id >= 0);
    if (real.length === 0) return ''; // the library throws on an empty list
    return this.tok.decode(real, { skip_special_tokens: opts.skipSpecial ?? true, clean_up_tokenization_spaces: false });
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /**
   * LLaVA's `tokenizer_image_token`: split on `<image>`, tokenise each chunk on its own, keep BOS
   * on the first chunk only, and mark where the image embeddings go.
   */
  encodeImagePrompt(prompt: string, opts: { bos?: boolean } = { bos: true }): PromptPiece[] {
    const chunks = prompt.split(this.imageToken);
    const pieces: PromptPiece[] = [];
    chunks.forEach((chunk, i) => {
      if (i > 0) pieces.push({ kind: 'image' });
      const ids = this.encode(chunk, { bos: i === 0 && (opts.bos ?? true) });
      if (ids.length) pieces.push({ kind: 'text', ids });
    });
    return pieces;
  }

  /** Flattens pieces to one id list with IMAGE_TOKEN_INDEX where the image goes (as the reference does). */
  static flatten(pieces: readonly PromptPiece[]): number[] {
    return pieces.flatMap((p) => (p.kind === 'text' ? p.ids : [IMAGE_TOKEN_INDEX]));
  }

  /** A streaming decoder over tokens generated from here on. */
  streamDecoder(): StreamDecoder {
    return new StreamDecoder((ids) => this.decode(ids));
  }
}

/**
 * Incremental detokenisation for streaming. Decoding token by token breaks multi-byte
 * characters (byte-fallback tokens) and SentencePiece's leading-space rule, so instead the whole
 * generated list is decoded each time and only the new, stable suffix is emitted; a trailing
 * U+FFFD (an incomplete UTF-8 sequence) is held back until the next token completes it. Cost is
 * negligible at chat lengths (runtime-findings §7: 500 re-decodes ≈ 19 ms).
 */
export class StreamDecoder {
  private ids: number[] = [];
  private emitted = '';

  constructor(private readonly decodeFn: (ids: number[]) => string) {}

  /** Adds a token; returns the newly stable text (possibly empty). */
  push(id: number): string {
    this.ids.push(id);
    const text = this.decodeFn(this.ids);
    if (text.endsWith('\uFFFD')) return '';
    return this.take(text);
  }

  /** The rest at the end of generation, including any incomplete character. */
  flush(): string {
    return this.take(this.decodeFn(this.ids));
  }

  get text(): string {
    return this.emitted;
  }

  private take(text: string): string {
    // If the decoder ever revised earlier text, what was sent stays sent: continuing after the
    // emitted length keeps the stream from repeating itself.
    const delta = text.slice(this.emitted.length);
    this.emitted = text;
    return delta;
  }
}
