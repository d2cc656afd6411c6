/**
 * `Engine`: one loaded bundle (three ONNX sessions + tokenizer) and the tasks. Each inference
 * worker holds exactly one, created at startup and kept for the worker's life.
 */
import type { BundleOptions, ExecutionDevice } from './bundle';
import { loadBundle, ModelBundle } from './bundle';
import type { Dtype, Manifest } from './manifest';
import { ImageLimits, PreparedImage, preprocessImage } from './image';
import { ModelRunner } from './runner';
import { DEFAULT_REPETITION_GUARD, RepetitionGuard } from './sampling';
import { ImageEmbedding, Sequence, SequenceState } from './sequence';
import * as tasks from './tasks';
import { TextTokenizer } from './tokenizer';
import { BundleError } from './errors';

export interface EngineOptions extends BundleOptions {
  /** Limits for untrusted images (bytes, pixels, minimum size, alpha handling). */
  imageLimits?: ImageLimits;
  /** Loop guard for every generation; `false` disables it. */
  repetitionGuard?: RepetitionGuard | false;
}

export interface EngineInfo {
  name: string;
  dtype: Dtype;
  device: ExecutionDevice;
  imageSize: number;
  imageTokens: number;
  contextLength: number;
  numLayers: number;
}

export interface EncodedImage {
  embedding: ImageEmbedding;
  ms: number;
}

/** An image to run a task on: raw preprocessing output (encoded now) or a cached embedding. */
export type ImageInput = PreparedImage | { embedding: ImageEmbedding };

export class Engine {
  readonly manifest: Manifest;
  readonly tokenizer: TextTokenizer;
  readonly runner: ModelRunner;
  readonly info: EngineInfo;
  private readonly ctx: tasks.TaskContext;

  private constructor(
    private readonly bundle: ModelBundle,
    tokenizer: TextTokenizer,
    private readonly options: EngineOptions,
  ) {
    this.manifest = bundle.manifest;
    this.tokenizer = tokenizer;
    this.runner = new ModelRunner(bundle);
    const d = bundle.manifest.decoder;
    this.info = {
      name: bundle.manifest.name,
      dtype: bundle.dtype,
      device: bundle.device,
      imageSize: bundle.manifest.image.size,
      imageTokens: bundle.manifest.image.num_tokens,
      contextLength: d.max_position_embeddings,
      numLayers: d.num_layers,
    };
    this.ctx = {
      manifest: this.manifest,
      runner: this.runner,
      tokenizer,
      repetitionGuard: options.repetitionGuard ?? DEFAULT_REPETITION_GUARD,
    };
  }

  /** Loads and checks a bundle; throws `BundleError` naming any inconsistency. */
  static async load(dir: string, options: EngineOptions = {}): Promise<Engine> {
    const bundle = await loadBundle(dir, options);
    try {
      const tok = await TextTokenizer.load(bundle.tokenizerPath, bundle.manifest.tokenizer);
      if (tok.vocabSize > bundle.manifest.decoder.vocab_size) {
        throw new BundleError(
          'tokenizer_mismatch',
          `tokenizer has ${tok.vocabSize} tokens but the decoder's vocab_size is ${bundle.manifest.decoder.vocab_size}`,
        );
      }
      return new Engine(bundle, tok, options);
    } catch (err) {
      await bundle.release();
      throw err;
    }
  }

  /** Untrusted bytes → normalised pixels (throws `ImageError` with a user-facing message). */
  prepareImage(bytes: Uint8Array, limits?: ImageLimits): Promise<PreparedImage> {
    return preprocessImage(bytes, this.manifest.image, { ...this.options.imageLimits, ...limits });
  }

  /** Pixels → image embeddings (cache these by `PreparedImage.digest`). */
  async encodeImage(image: PreparedImage | Float32Array): Promise<EncodedImage> {
    const t0 = performance.now();
    const embedding = await this.runner.encodeImage(image instanceof Float32Array ? image : image.pixels);
    return { embedding, ms: performance.now() - t0 };
  }

  private async embeddingOf(image: ImageInput): Promise<EncodedImage> {
    if ('embedding' in image) return { embedding: image.embedding, ms: 0 };
    return this.encodeImage(image);
  }

  async describe(image: ImageInput, detail: tasks.DescribeDetail = 'brief', o: tasks.RunOptions = {}): Promise<tasks.TaskResult> {
    const e = await this.embeddingOf(image);
    return tasks.describe(this.ctx, e.embedding, detail, o, e.ms);
  }

  async ask(image: ImageInput, question: string, o: tasks.RunOptions = {}): Promise<tasks.TaskResult> {
    const e = await this.embeddingOf(image);
    return tasks.ask(this.ctx, e.embedding, question, o, e.ms);
  }

  async quiz(image: ImageInput, o: tasks.QuizOptions): Promise<tasks.QuizResult> {
    const e = await this.embeddingOf(image);
    return tasks.quiz(this.ctx, e.embedding, o, e.ms);
  }

  /** Continues a conversation (a Sequence or its snapshot); only new tokens are computed. */
  chat(conversation: Sequence | SequenceState, message: string, o: tasks.RunOptions = {}): Promise<tasks.TaskResult> {
    const seq = conversation instanceof Sequence ? conversation : Sequence.restore(conversation);
    return tasks.chat(this.ctx, seq, message, o);
  }

  /** The task context, for callers composing their own flows (tests, benchmarks, a batch scheduler). */
  get context(): tasks.TaskContext {
    return this.ctx;
  }

  async release(): Promise<void> {
    await this.bundle.release();
  }
}
