/**
 * `model.json` of a model bundle (docs/model-bundle.md, format version 1), validated with zod.
 * Every field the engine relies on is checked here, so a malformed manifest fails at load time
 * with the path of the offending field instead of as a NaN deep inside generation.
 */
import { z } from 'zod';

export const DTYPES = ['fp32', 'fp16'] as const;
export type Dtype = (typeof DTYPES)[number];

const posInt = z.number().int().positive();
const nonEmpty = z.string().min(1);
const rgb = z.tuple([z.number(), z.number(), z.number()]);

/** One ONNX file per weight dtype present, e.g. `{ fp16: "onnx/x_fp16.onnx" }` (partial: zod 4 makes enum-keyed records exhaustive). */
const filesByDtype = z
  .partialRecord(z.enum(DTYPES), nonEmpty)
  .refine((files) => Object.keys(files).length > 0, 'at least one dtype file is required');

export const ImageSpecSchema = z.object({
  size: posInt,
  mean: rgb,
  std: rgb.refine((s) => s.every((v) => v > 0), 'std values must be > 0'),
  resample: z.enum(['bicubic', 'bilinear', 'nearest']),
  pad: z.enum(['square-mean', 'none']),
  crop: z.enum(['center']).default('center'),
  num_tokens: posInt,
});
export type ImageSpec = z.infer<typeof ImageSpecSchema>;

const graphSchema = z.object({ files: filesByDtype, input: nonEmpty, output: nonEmpty });

/** `{i}` in a name is the layer index. */
const layerName = nonEmpty.refine((s) => s.includes('{i}'), 'must contain "{i}" (the layer index)');

export const DecoderSpecSchema = z
  .object({
    files: filesByDtype,
    num_layers: posInt,
    num_heads: posInt,
    num_kv_heads: posInt,
    head_dim: posInt,
    hidden_size: posInt,
    vocab_size: posInt,
    max_position_embeddings: posInt,
    inputs: z.object({
      embeds: nonEmpty,
      attention_mask: nonEmpty,
      position_ids: nonEmpty,
      past_key: layerName,
      past_value: layerName,
    }),
    outputs: z.object({ logits: nonEmpty, present_key: layerName, present_value: layerName }),
  })
  .refine((d) => d.num_heads % d.num_kv_heads === 0, {
    message: 'num_heads must be a multiple of num_kv_heads',
    path: ['num_kv_heads'],
  });
export type DecoderSpec = z.infer<typeof DecoderSpecSchema>;

export const TemplateSpecSchema = z.object({
  system: z.string(),
  roles: z.array(nonEmpty).min(2),
  sep: z.string(),
  sep2: z.string(),
});
export type TemplateSpec = z.infer<typeof TemplateSpecSchema>;

export const GenerationSpecSchema = z.object({
  max_new_tokens: posInt,
  temperature: z.number().min(0),
  top_k: z.number().int().min(0).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  repetition_penalty: z.number().positive().optional(),
});
export type GenerationSpec = z.infer<typeof GenerationSpecSchema>;

export const GENERATION_TASKS = ['describe', 'ask', 'quiz_question', 'quiz_answer', 'chat'] as const;
export type GenerationTask = (typeof GENERATION_TASKS)[number];

export const ManifestSchema = z
  .object({
    format: z.literal('curio-model-bundle'),
    format_version: z.literal(1),
    architecture: z.literal('sq-llava'),
    name: nonEmpty,
    dtypes: z.array(z.enum(DTYPES)).min(1),
    image: ImageSpecSchema,
    vision: graphSchema,
    embed: graphSchema,
    decoder: DecoderSpecSchema,
    tokenizer: z.object({
      file: nonEmpty,
      bos_token_id: z.number().int().min(0),
      eos_token_id: z.number().int().min(0),
      unk_token_id: z.number().int().min(0),
      image_token: nonEmpty,
    }),
    templates: z
      .object({
        v1: TemplateSpecSchema,
        v1_sq: TemplateSpecSchema.refine((t) => t.roles.length >= 3, 'v1_sq needs roles USER, ASSISTANT, VUSER'),
      })
      .catchall(TemplateSpecSchema),
    stop: nonEmpty,
    generation: z.object({
      describe: GenerationSpecSchema,
      ask: GenerationSpecSchema,
      quiz_question: GenerationSpecSchema,
      quiz_answer: GenerationSpecSchema,
      chat: GenerationSpecSchema,
    }),
    prompts: z.object({ describe_brief: nonEmpty, describe_detailed: nonEmpty }).catchall(z.string()),
    source: z.unknown().optional(),
  })
  .superRefine((m, ctx) => {
    // Every advertised dtype must have a file in each of the three graphs.
    for (const dtype of m.dtypes) {
      for (const graph of ['vision', 'embed', 'decoder'] as const) {
        if (!m[graph].files[dtype]) {
          ctx.addIssue({
            code: 'custom',
            path: [graph, 'files', dtype],
            message: `dtype "${dtype}" is listed in dtypes but ${graph}.files has no "${dtype}" file`,
          });
        }
      }
    }
    if (m.image.pad === 'square-mean' && m.image.crop !== 'center') {
      ctx.addIssue({ code: 'custom', path: ['image', 'crop'], message: 'only centre crop is supported' });
    }
  });
export type Manifest = z.infer<typeof ManifestSchema>;

/** Flattens zod issues into one line per problem: `decoder.num_layers: expected number`. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}

/** Replaces `{i}` with the layer index in a per-layer tensor name. */
export function layerTensorName(pattern: string, layer: number): string {
  return pattern.split('{i}').join(String(layer));
}
