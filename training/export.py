"""Exports an `SQLLaVA` model to a Curio model bundle (docs/model-bundle.md) and checks it.

    python -m training.export --preset tiny --random-init --seed 0 --out DIR
    python -m training.export --checkpoint run/model.pt --out DIR     # config next to it

Library use (checkpoint converter, trainer):

    export_bundle(model, out_dir, name="sq-llava-micro", dtypes=("fp32", "fp16"),
                  tokenizer_json_path=None, generation=None, source=None, check=True) -> Path

The three graphs are traced from `SQLLaVA.encode_images`, `.embed` and `.decode` (opset 14),
post-processed with `training.onnx_fp16` (fp16 weight storage, external data over 2 GB), and,
with `check=True`, run with onnxruntime-node (`training/scripts/ort_run.mjs`) on the same random
inputs as PyTorch; the export fails (`ExportCheckError`) when they disagree.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
import torch.nn as nn

from .onnx_fp16 import (EXTERNAL_DATA_THRESHOLD, remove_noop_casts, save_model, to_fp16_weights,
                        topological_sort)
from .sqllava import conversation as conv
from .sqllava.configs import PRESETS, config_from_dict, config_to_dict
from .sqllava.model import SQLLaVA, SQLLaVAConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"
ORT_RUN = Path(__file__).resolve().parent / "scripts" / "ort_run.mjs"

OPSET = 14
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0
IMAGE_TOKEN_INDEX = -200  # the reference code's placeholder id for <image> (not in the vocabulary)

DEFAULT_GENERATION = {
    "describe": {"max_new_tokens": 64, "temperature": 0},
    "ask": {"max_new_tokens": 64, "temperature": 0},
    "quiz_question": {"max_new_tokens": 48, "temperature": 1.2, "top_k": 300, "top_p": 0.95},
    "quiz_answer": {"max_new_tokens": 64, "temperature": 0},
    "chat": {"max_new_tokens": 128, "temperature": 0},
}

GRAPHS = {  # key -> (file stem, model.json section)
    "vision": "vision_encoder",
    "embed": "embed_tokens",
    "decoder": "decoder_model_merged",
}

# Self-check tolerances: max |ort - torch| / max |torch| per output.
# fp32: same weights, same fp32 arithmetic; only op order / fused kernels differ (~1e-6).
TOL_FP32 = 1e-4
# fp16 graphs are compared with PyTorch running the *same fp16-rounded weights* in fp32 (the
# graph casts the weights back to fp32 and computes in fp32), so the same 1e-4 applies: any
# larger gap is an export bug, not rounding. The rounding itself (fp16 has an 11-bit
# significand: each weight moves by <= 2^-11 relative, ~2.4e-4 on average) is measured
# separately as "drift" from the fp32 model. Through a few layers the per-weight errors average
# out (fan-in sums of independent roundings), so logits and embeddings drift ~1e-3 relative;
# TOL_FP16_DRIFT = 2e-2 leaves a 10x margin on that while a dropped cast, a transposed or a
# wrong tensor gives O(1). The vision drift is reported but not bounded: the prototype
# extractor's hard argmax can flip a near-tied token to another centre, a legitimate
# discontinuous change the rounding is allowed to cause.
TOL_FP16 = 1e-4
TOL_FP16_DRIFT = 2e-2


class ExportCheckError(RuntimeError):
    """The exported graphs disagree with PyTorch."""


# ----------------------------------------------------------------------------- graph wrappers

class _Vision(nn.Module):
    def __init__(self, m: SQLLaVA):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m.encode_images(pixel_values)


class _Embed(nn.Module):
    def __init__(self, m: SQLLaVA):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m.embed(input_ids)


class _Decoder(nn.Module):
    def __init__(self, m: SQLLaVA):
        super().__init__()
        self.m = m

    def forward(self, inputs_embeds, attention_mask, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = self.m.decode(inputs_embeds, attention_mask, position_ids, past)
        out = [logits]
        for k, v in presents:
            out += [k, v]
        return tuple(out)


def past_names(num_layers: int) -> List[str]:
    names = []
    for i in range(num_layers):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


def present_names(num_layers: int) -> List[str]:
    names = []
    for i in range(num_layers):
        names += [f"present.{i}.key", f"present.{i}.value"]
    return names


def _torch_export(module: nn.Module, args: tuple, path: Path, inputs: List[str], outputs: List[str],
                  dynamic_axes: Dict[str, Dict[int, str]]) -> None:
    # No constant folding: parameters keep their names as initializers (the fp16 pass selects
    # weights by name), and onnxruntime folds the remaining transposes when it loads the graph.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=False,
                          export_params=True)


def export_fp32_graphs(model: SQLLaVA, work: Path) -> Dict[str, Path]:
    """Traces the three graphs into `work/<key>/<stem>.onnx` (one folder each, as torch writes
    per-tensor external files next to a graph over 2 GB)."""
    cfg = model.cfg
    t = cfg.text
    s = cfg.vision.image_size
    paths = {}
    with torch.no_grad():
        for key in GRAPHS:
            (work / key).mkdir(parents=True, exist_ok=True)
            paths[key] = work / key / (GRAPHS[key] + ".onnx")
        _torch_export(_Vision(model), (torch.zeros(1, 3, s, s),), paths["vision"], ["pixel_values"],
                      ["image_features"], {"pixel_values": {0: "batch"}, "image_features": {0: "batch"}})
        _torch_export(_Embed(model), (torch.ones(1, 3, dtype=torch.long),), paths["embed"], ["input_ids"],
                      ["inputs_embeds"], {"input_ids": {0: "batch", 1: "sequence"},
                                          "inputs_embeds": {0: "batch", 1: "sequence"}})
        # Traced with a non-empty past (B=2, T=3, P=2) so the concat is general; P=0 is checked.
        b, n, p = 2, 3, 2
        pn, on = past_names(t.num_layers), present_names(t.num_layers)
        args = (torch.zeros(b, n, t.hidden_size), torch.ones(b, p + n, dtype=torch.long),
                torch.arange(p, p + n).expand(b, n).contiguous(),
                *[torch.zeros(b, t.num_kv_heads, p, t.head_dim) for _ in pn])
        dyn = {"inputs_embeds": {0: "batch", 1: "sequence"},
               "attention_mask": {0: "batch", 1: "total_sequence"},
               "position_ids": {0: "batch", 1: "sequence"},
               "logits": {0: "batch", 1: "sequence"}}
        for name in pn:
            dyn[name] = {0: "batch", 2: "past_sequence"}
        for name in on:
            dyn[name] = {0: "batch", 2: "total_sequence"}
        _torch_export(_Decoder(model), args, paths["decoder"],
                      ["inputs_embeds", "attention_mask", "position_ids"] + pn, ["logits"] + on, dyn)
    return paths


# ----------------------------------------------------------------------------- metadata files

def model_json(cfg: SQLLaVAConfig, name: str, dtypes: Sequence[str], generation: Optional[dict],
               source: Optional[dict]) -> dict:
    t = cfg.text

    def files(key):
        return {d: f"onnx/{GRAPHS[key]}{'' if d == 'fp32' else '_' + d}.onnx" for d in dtypes}

    return {
        "format": "curio-model-bundle", "format_version": 1,
        "architecture": "sq-llava",
        "name": name,
        "dtypes": list(dtypes),
        "image": {"size": cfg.vision.image_size, "mean": CLIP_MEAN, "std": CLIP_STD,
                  "resample": "bicubic", "pad": "square-mean", "crop": "center",
                  "num_tokens": cfg.num_image_tokens},
        "vision": {"files": files("vision"), "input": "pixel_values", "output": "image_features"},
        "embed": {"files": files("embed"), "input": "input_ids", "output": "inputs_embeds"},
        "decoder": {
            "files": files("decoder"),
            "num_layers": t.num_layers, "num_heads": t.num_heads, "num_kv_heads": t.num_kv_heads,
            "head_dim": t.head_dim, "hidden_size": t.hidden_size, "vocab_size": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings,
            "inputs": {"embeds": "inputs_embeds", "attention_mask": "attention_mask",
                       "position_ids": "position_ids",
                       "past_key": "past_key_values.{i}.key", "past_value": "past_key_values.{i}.value"},
            "outputs": {"logits": "logits", "present_key": "present.{i}.key",
                        "present_value": "present.{i}.value"},
        },
        "tokenizer": {"file": "tokenizer.json", "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                      "unk_token_id": UNK_ID, "image_token": conv.IMAGE_TOKEN},
        "templates": {k: v.as_json() for k, v in conv.TEMPLATES.items()},
        "stop": "</s>",
        "generation": copy.deepcopy(generation if generation is not None else DEFAULT_GENERATION),
        "prompts": {"describe_brief": conv.DESCRIBE_BRIEF, "describe_detailed": conv.DESCRIBE_DETAILED},
        "source": source or {},
    }


def hf_config_json(cfg: SQLLaVAConfig) -> dict:
    """Transformers.js `config.json` (LLaVA family). The projector is SQ-LLaVA's own."""
    t, v = cfg.text, cfg.vision
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": IMAGE_TOKEN_INDEX,
        "vision_feature_layer": v.select_layer,
        "vision_feature_select_strategy": "default",  # drop CLS
        "projector_hidden_act": "quick_gelu",
        "mm_projector_type": "cluster" if cfg.use_prototypes else "mlp2x_quick_gelu",
        "num_prototypes": cfg.num_prototypes,
        "cluster_iters": cfg.cluster_iters,
        "image_seq_length": cfg.num_image_tokens,
        "vocab_size": t.vocab_size,
        "pad_token_id": UNK_ID,
        "text_config": {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
            "head_dim": t.head_dim, "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_theta, "hidden_act": "silu",
            "tie_word_embeddings": False,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": UNK_ID,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "image_size": v.image_size, "patch_size": v.patch_size,
            "layer_norm_eps": v.layer_norm_eps, "hidden_act": "quick_gelu", "num_channels": 3,
            "projection_dim": t.hidden_size,
        },
        "transformers.js_config": {"kv_cache_dtype": "float32"},
    }


def preprocessor_json(cfg: SQLLaVAConfig) -> dict:
    s = cfg.vision.image_size
    return {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
        "do_resize": True, "size": {"shortest_edge": s}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": s, "width": s},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "do_convert_rgb": True,
        # SQ-LLaVA pads to a square with the mean colour first (expand2square); Transformers.js
        # has no such step, model.json's image.pad says it for Curio.
        "image_aspect_ratio": "pad",
    }


def generation_json() -> dict:
    return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": UNK_ID,
            "do_sample": False, "max_new_tokens": 64}


DEFAULT_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
    "add_bos_token": True, "add_eos_token": False, "legacy": True,
    "clean_up_tokenization_spaces": False, "model_max_length": 4096,
}


def _find_tokenizer_files(tokenizer_json_path: Optional[Path]) -> Tuple[Path, Optional[Path]]:
    if tokenizer_json_path is None:
        for cand in ("llama-tokenizer.json", "tokenizer.json"):
            if (ASSETS / cand).is_file():
                tokenizer_json_path = ASSETS / cand
                break
    if tokenizer_json_path is None or not Path(tokenizer_json_path).is_file():
        raise FileNotFoundError(f"tokenizer.json not found (looked in {ASSETS}); pass tokenizer_json_path")
    tokenizer_json_path = Path(tokenizer_json_path)
    config = None
    for cand in (tokenizer_json_path.parent / "tokenizer_config.json",
                 tokenizer_json_path.with_name(tokenizer_json_path.stem.replace("tokenizer", "tokenizer_config")
                                               + ".json"),
                 ASSETS / "tokenizer_config.json", ASSETS / "llama-tokenizer_config.json"):
        if cand.is_file():
            config = cand
            break
    return tokenizer_json_path, config


# ----------------------------------------------------------------------------- export

def export_bundle(model: SQLLaVA, out_dir, *, name: str, dtypes: Sequence[str] = ("fp32", "fp16"),
                  tokenizer_json_path=None, generation: Optional[dict] = None, source: Optional[dict] = None,
                  check: bool = True, external_threshold: int = EXTERNAL_DATA_THRESHOLD,
                  report: Callable[[str], None] = print) -> Path:
    """Writes the bundle for `model` into `out_dir` (created; existing bundle files replaced).

    dtypes: weight variants, a subset of ("fp32", "fp16"); the first is model.json's default.
    tokenizer_json_path: defaults to training/assets/llama-tokenizer.json (tokenizer_config.json
    beside it, or in training/assets, is copied too). generation: model.json "generation"
    presets (defaults: DEFAULT_GENERATION). source: free-form provenance for model.json.
    check: run every graph with onnxruntime-node against PyTorch (raises ExportCheckError).
    external_threshold: weight bytes above which a graph's weights go to `<graph>.onnx_data`.
    """
    for d in dtypes:
        if d not in ("fp32", "fp16"):
            raise ValueError(f"unknown dtype {d!r}")
    if not dtypes:
        raise ValueError("dtypes is empty")
    model = model.eval()
    out = Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    for old in (out / "onnx").glob("*.onnx*"):
        old.unlink()
    t0 = time.time()
    tok_json, tok_config = _find_tokenizer_files(tokenizer_json_path)
    # Parameter names as they appear in the traced graphs (wrapper attribute `m.`).
    param_names = {"m." + n for n, _ in model.named_parameters()}
    with tempfile.TemporaryDirectory(prefix="curio-export-") as tmp:
        raw = export_fp32_graphs(model, Path(tmp))
        for key, path in raw.items():
            # onnx.load also reads torch's per-tensor external files (graphs over 2 GB)
            graph = remove_noop_casts(topological_sort(onnx.load(str(path))))
            stem = GRAPHS[key]
            for d in dtypes:
                g = graph if d == "fp32" else to_fp16_weights(graph, lambda n: n in param_names)
                dest = out / "onnx" / (stem + ("" if d == "fp32" else "_" + d) + ".onnx")
                ext = save_model(g, dest, external_threshold=external_threshold)
                size = dest.stat().st_size + (dest.with_name(dest.name + "_data").stat().st_size if ext else 0)
                report(f"  wrote {dest.relative_to(out)} ({size / 1e6:.2f} MB{', external data' if ext else ''})")
    shutil.copyfile(tok_json, out / "tokenizer.json")
    if tok_config is not None:
        shutil.copyfile(tok_config, out / "tokenizer_config.json")
    else:
        _write_json(out / "tokenizer_config.json", DEFAULT_TOKENIZER_CONFIG)
    cfg = model.cfg
    _write_json(out / "model.json", model_json(cfg, name, dtypes, generation, source))
    _write_json(out / "config.json", hf_config_json(cfg))
    _write_json(out / "preprocessor_config.json", preprocessor_json(cfg))
    _write_json(out / "generation_config.json", generation_json())
    report(f"exported {name} to {out} in {time.time() - t0:.1f}s")
    if check:
        check_bundle(model, out, report=report)
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- onnxruntime-node runner

def run_ort(jobs: List[Tuple[Path, Dict[str, np.ndarray]]], node: str = "node") -> List[Dict[str, np.ndarray]]:
    """Runs each (model path, {input name: array}) with onnxruntime-node; returns output dicts."""
    with tempfile.TemporaryDirectory(prefix="curio-ort-") as tmp:
        tmp = Path(tmp)
        spec = {"jobs": []}
        for j, (model_path, feeds) in enumerate(jobs):
            inputs = {}
            for k, (name, arr) in enumerate(feeds.items()):
                arr = np.ascontiguousarray(arr)
                if arr.dtype not in (np.float32, np.int64):
                    raise TypeError(f"{name}: {arr.dtype}")
                f = f"in_{j}_{k}.bin"
                arr.tofile(tmp / f)
                inputs[name] = {"dtype": str(arr.dtype), "shape": list(arr.shape), "file": f}
            spec["jobs"].append({"model": str(Path(model_path).resolve()), "inputs": inputs, "out_dir": f"out_{j}"})
        (tmp / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([node, str(ORT_RUN), str(tmp / "spec.json")], cwd=str(REPO_ROOT),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ExportCheckError(f"onnxruntime-node failed:\n{proc.stderr.strip()[-4000:]}")
        results = []
        for j in range(len(jobs)):
            d = tmp / f"out_{j}"
            index = json.loads((d / "outputs.json").read_text())
            outs = {}
            for name, desc in index.items():
                dt = {"float32": np.float32, "int64": np.int64}[desc["dtype"]]
                outs[name] = np.fromfile(d / desc["file"], dtype=dt).reshape(desc["shape"])
            results.append(outs)
        return results


# ----------------------------------------------------------------------------- self-check

def rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (shape mismatch -> inf)."""
    if got.shape != want.shape:
        return float("inf")
    scale = max(float(np.abs(want).max()) if want.size else 0.0, 1e-6)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale if want.size else 0.0


def left_padded_positions(mask: np.ndarray) -> np.ndarray:
    """position_ids counting real tokens only (padding gets 0)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def check_cases(cfg: SQLLaVAConfig, seed: int = 0) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """Random inputs for each graph: vision (B=2), embed (B=2), decoder step 1 (P=0, B=2 with
    left padding) -- step 2's past comes from the reference run, so it is built later."""
    g = np.random.default_rng(seed)
    t, s = cfg.text, cfg.vision.image_size
    ids = g.integers(0, t.vocab_size, size=(2, 7)).astype(np.int64)
    ids[0, :4] = [0, 1, 2, t.vocab_size - 1]
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=np.int64)
    step1 = {"inputs_embeds": g.standard_normal((2, 5, t.hidden_size)).astype(np.float32),
             "attention_mask": mask, "position_ids": left_padded_positions(mask)}
    for name in past_names(t.num_layers):  # the empty first-step cache, P = 0
        step1[name] = np.zeros((2, t.num_kv_heads, 0, t.head_dim), np.float32)
    return {
        "vision": [{"pixel_values": g.standard_normal((2, 3, s, s)).astype(np.float32)}],
        "embed": [{"input_ids": ids}],
        "decoder": [step1],
    }


def _torch_decode(model: SQLLaVA, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    t = model.cfg.text
    names = past_names(t.num_layers)
    past = None
    if names[0] in feeds:
        past = [(torch.from_numpy(feeds[names[2 * i]]), torch.from_numpy(feeds[names[2 * i + 1]]))
                for i in range(t.num_layers)]
    logits, presents = model.decode(torch.from_numpy(feeds["inputs_embeds"]),
                                    torch.from_numpy(feeds["attention_mask"]),
                                    torch.from_numpy(feeds["position_ids"]), past)
    out = {"logits": logits.numpy()}
    for i, (k, v) in enumerate(presents):
        out[f"present.{i}.key"] = k.numpy()
        out[f"present.{i}.value"] = v.numpy()
    return out


def torch_reference(model: SQLLaVA, key: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    with torch.no_grad():
        if key == "vision":
            return {"image_features": model.encode_images(torch.from_numpy(feeds["pixel_values"])).numpy()}
        if key == "embed":
            return {"inputs_embeds": model.embed(torch.from_numpy(feeds["input_ids"])).numpy()}
        return _torch_decode(model, feeds)


def fp16_rounded(model: SQLLaVA) -> SQLLaVA:
    """A copy whose parameters are rounded to float16 (kept as float32): what the fp16 graphs hold."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    return m


def _decoder_step2(cfg: SQLLaVAConfig, step1: Dict[str, np.ndarray], ref1: Dict[str, np.ndarray],
                   seed: int) -> Dict[str, np.ndarray]:
    g = np.random.default_rng(seed + 1)
    t = cfg.text
    mask = np.concatenate([step1["attention_mask"], np.ones((2, 2), np.int64)], axis=1)
    pos = step1["position_ids"][:, -1:] + np.array([[1, 2]], np.int64)
    feeds = {"inputs_embeds": g.standard_normal((2, 2, t.hidden_size)).astype(np.float32),
             "attention_mask": mask, "position_ids": pos}
    for i in range(t.num_layers):
        feeds[f"past_key_values.{i}.key"] = ref1[f"present.{i}.key"]
        feeds[f"past_key_values.{i}.value"] = ref1[f"present.{i}.value"]
    return feeds


def check_bundle(model: SQLLaVA, bundle_dir, *, dtypes: Optional[Sequence[str]] = None, seed: int = 0,
                 tol_fp32: float = TOL_FP32, tol_fp16: float = TOL_FP16, tol_drift: float = TOL_FP16_DRIFT,
                 report: Callable[[str], None] = print) -> Dict[str, Dict[str, float]]:
    """Runs every graph of the bundle with onnxruntime-node and PyTorch on the same random inputs.

    Cases: vision on random pixels (B=2); embed on ids (B=2, incl. 0/1/2/V-1); decoder step 1
    with an empty past (P=0), B=2, the second row left-padded; decoder step 2 (T=2) on the
    step-1 cache. Returns {"<dtype>/<graph>/<case>/<output>": rel diff}; raises ExportCheckError
    listing every output over tolerance.
    """
    bundle = Path(bundle_dir)
    manifest = json.loads((bundle / "model.json").read_text())
    dtypes = list(dtypes or manifest["dtypes"])
    model = model.eval()
    cfg = model.cfg
    refs = {"fp32": model}
    if "fp16" in dtypes:
        refs["fp16"] = fp16_rounded(model)
    t0 = time.time()
    cases = check_cases(cfg, seed)
    # Reference outputs per dtype; step 2 is built from the fp32 step-1 cache (same for both).
    ref1 = torch_reference(model, "decoder", cases["decoder"][0])
    cases["decoder"].append(_decoder_step2(cfg, cases["decoder"][0], ref1, seed))
    case_names = {"vision": ["b2"], "embed": ["b2"], "decoder": ["step1_p0_leftpad", "step2_cache"]}
    jobs, labels = [], []
    for d in dtypes:
        for key in GRAPHS:
            path = bundle / manifest[key]["files"][d]
            for i, feeds in enumerate(cases[key]):
                jobs.append((path, feeds))
                labels.append((d, key, case_names[key][i], feeds))
    got = run_ort(jobs)
    results: Dict[str, float] = {}
    failures = []
    drift: Dict[str, float] = {}
    for (d, key, case, feeds), outs in zip(labels, got):
        want = torch_reference(refs[d], key, feeds)
        tol = tol_fp32 if d == "fp32" else tol_fp16
        if set(outs) != set(want):
            failures.append(f"{d}/{key}: outputs {sorted(outs)} != expected {sorted(want)}")
            continue
        for name in want:
            r = rel_diff(outs[name], want[name])
            label = f"{d}/{key}/{case}/{name}"
            results[label] = r
            if not r <= tol:
                failures.append(f"{label}: max|ort-torch|/max|torch| = {r:.3g} > {tol:g}"
                                f" (shape {list(outs[name].shape)} vs {list(want[name].shape)})")
        if d == "fp16":  # weight-rounding drift from the fp32 model, PyTorch on both sides
            full = torch_reference(model, key, feeds)
            for name in want:
                r = rel_diff(want[name], full[name])
                label = f"drift/{key}/{case}/{name}"
                drift[label] = r
                if key != "vision" and not r <= tol_drift:
                    failures.append(f"{label}: fp16-rounded weights move the output by {r:.3g} > {tol_drift:g}")
    worst: Dict[Tuple[str, str], float] = {}
    for label, r in results.items():
        d, key = label.split("/")[:2]
        worst[(d, key)] = max(worst.get((d, key), 0.0), r)
    lines = [f"self-check ({time.time() - t0:.1f}s, onnxruntime-node vs PyTorch, max|diff|/max|ref|):"]
    for (d, key), r in worst.items():
        tol = tol_fp32 if d == "fp32" else tol_fp16
        dr = max([v for k, v in drift.items() if k.split("/")[1] == key], default=None)
        extra = f"   fp16 weight drift {dr:.2e}" if d == "fp16" and dr is not None else ""
        lines.append(f"  {d:5s} {key:8s} {r:.2e} (tol {tol:g}){extra}")
    report("\n".join(lines))
    if failures:
        raise ExportCheckError("exported graphs disagree with PyTorch:\n  " + "\n  ".join(failures))
    results.update(drift)
    return results


# ----------------------------------------------------------------------------- checkpoints / CLI

def load_checkpoint(path, config_path=None) -> SQLLaVA:
    """A training checkpoint: either {"config": dict, "state_dict"|"model": ...} in one file, or a
    plain state_dict with its config json (`--config`, else `config.json` or `<stem>.json` beside it)."""
    path = Path(path)
    obj = torch.load(str(path), map_location="cpu")
    cfg_dict = None
    state = obj
    if isinstance(obj, dict) and ("state_dict" in obj or "model" in obj):
        state = obj.get("state_dict", obj.get("model"))
        cfg_dict = obj.get("config")
    if config_path is None and cfg_dict is None:
        for cand in (path.with_suffix(".json"), path.parent / "config.json"):
            if cand.is_file():
                config_path = cand
                break
    if cfg_dict is None:
        if config_path is None:
            raise FileNotFoundError(f"no config for {path}: pass --config")
        cfg_dict = json.loads(Path(config_path).read_text())
        cfg_dict = cfg_dict.get("config", cfg_dict) if "vision" not in cfg_dict else cfg_dict
    cfg = cfg_dict if isinstance(cfg_dict, SQLLaVAConfig) else config_from_dict(cfg_dict)
    model = SQLLaVA(cfg)
    model.load_state_dict(state)
    return model.eval()


def random_model(preset: str, seed: int = 0) -> SQLLaVA:
    torch.manual_seed(seed)
    return SQLLaVA(PRESETS[preset]).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training checkpoint (state_dict; config json beside it or --config)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="model size, with --random-init")
    ap.add_argument("--config", help="config json for --checkpoint")
    ap.add_argument("--random-init", action="store_true", help="random weights (with --preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", help="bundle name (default: sq-llava-<preset> or the checkpoint stem)")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--tokenizer", help="tokenizer.json (default training/assets/llama-tokenizer.json)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--external-threshold", type=int, default=EXTERNAL_DATA_THRESHOLD,
                    help="weight bytes over which a graph uses external data (test: 0)")
    args = ap.parse_args(argv)
    if args.preset:
        if not args.random_init:
            ap.error("--preset needs --random-init (or use --checkpoint)")
        model = random_model(args.preset, args.seed)
        name = args.name or f"sq-llava-{args.preset}"
        source = {"preset": args.preset, "random_init": True, "seed": args.seed,
                  "config": config_to_dict(model.cfg)}
    else:
        model = load_checkpoint(args.checkpoint, args.config)
        name = args.name or Path(args.checkpoint).stem
        source = {"checkpoint": str(args.checkpoint), "config": config_to_dict(model.cfg)}
    source["exporter"] = "training/export.py"
    source["git"] = _git_sha()
    try:
        export_bundle(model, args.out, name=name, dtypes=tuple(args.dtypes.split(",")),
                      tokenizer_json_path=args.tokenizer, source=source, check=not args.no_check,
                      external_threshold=args.external_threshold)
    except ExportCheckError as e:
        print(f"EXPORT CHECK FAILED: {e}", file=sys.stderr)
        return 1
    return 0


def _git_sha() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(REPO_ROOT), capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance only
        return None


if __name__ == "__main__":
    sys.exit(main())
