/**
 * Public API of the engine. Everything model-related (ONNX, tokenizer, images) lives under
 * src/model; nothing outside it imports onnxruntime-node.
 */
export { Engine } from './engine';
export type { EngineOptions, EngineInfo, EncodedImage, ImageInput } from './engine';
export { loadBundle, readManifest, checkGraphs, decoderNames, silentLogger } from './bundle';
export type { BundleOptions, ModelBundle, DecoderNames, EngineLogger, ExecutionDevice } from './bundle';
export { ManifestSchema, DTYPES, GENERATION_TASKS, layerTensorName } from './manifest';
export type { Manifest, Dtype, ImageSpec, DecoderSpec, TemplateSpec, GenerationSpec, GenerationTask } from './manifest';
export { BundleError, ImageError, GenerationError } from './errors';
export type { BundleErrorCode, ImageErrorCode, GenerationErrorCode } from './errors';
export { preprocessImage, decodeImage, pixelsFromRgb, expandToSquare, resizeAndCrop, normalizeToChw, padColour, DEFAULT_IMAGE_LIMITS } from './image';
export type { ImageLimits, PreparedImage, RgbImage } from './image';
export { resizeRgb8 } from './resample';
export type { ResampleFilter } from './resample';
export { TextTokenizer, StreamDecoder, IMAGE_TOKEN_INDEX } from './tokenizer';
export type { PromptPiece, TokenizerSpec } from './tokenizer';
export { renderPrompt, openingPrompt, userTurn, vuserTurn, sqAnswerTurn, sqTrainingText, firstUserMessage, IMAGE_PLACEHOLDER } from './prompt';
export type { Message, TemplateName } from './prompt';
export { Rng, argmax, sampleToken, isLooping, randomSeed, DEFAULT_REPETITION_GUARD } from './sampling';
export type { SamplingParams, RepetitionGuard } from './sampling';
export { Sequence } from './sequence';
export type { SequenceState, KvCache, LayerCache, ImageEmbedding } from './sequence';
export { ModelRunner } from './runner';
export { generate } from './generate';
export type { FinishReason, DecodeRunner, TokenEvent, GenerateOptions, GenerationResult, GenerationTimings } from './generate';
export { describe, ask, quiz, continueQuiz, chat, openSequence, closeTurn, sanitizeUserText } from './tasks';
export type { TaskContext, TaskRunner, RunOptions, TaskResult, TaskTimings, QuizOptions, QuizResult, QuizRound, QuizEvent, DescribeDetail } from './tasks';
