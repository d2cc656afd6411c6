"""Converts the released SQ-LLaVA weights (three downloads) into a Curio model bundle.

    python -m training.convert \\
        --sq-llava  ckpt/sqllava-lora-7b \\                                     # ZachSun/sqllava-lora-7b
        --base      ckpt/ShareGPT4V-7B_Pretrained_vit-large336-l12_vicuna-7b-v1.5 \\
        --vision    ckpt/ShareGPT4V-7B_Pretrained_vit-large336-l12 \\           # config.json's mm_vision_tower
        --out       models/sq-llava-7b

What it does, in the order of the reference loader (`sqllava/model/builder.py`):

1. builds `SQLLaVAConfig` from the SQ-LLaVA `config.json` (LLaMA sizes, `mm_*` fields) and the
   CLIP tower's `config.json` (K=256 prototypes and 2 iterations are hard-coded in the reference);
2. loads the base LLM (sharded `.bin` or `.safetensors`, with or without an index), the CLIP
   tower (`vision_model.*`) and `non_lora_trainables.bin` (`model.mm_projector.*`);
3. merges the LLM LoRA (`adapter_model.bin`) and the ViT LoRA (`Vit-lora/adapter_model.bin`):
   W += (lora_alpha / r) * B @ A, computed in float32;
4. accounts for every key: anything unexpected, missing or of the wrong shape stops the
   conversion with a list naming each one (known extras, such as ShareGPT4V's own projector or
   RoPE buffers, are skipped and reported);
5. prints a report (parameter counts, LoRA scales, whether the ViT-LoRA B matrices are all zero)
   and exports the bundle with `training/export.py` (which checks the ONNX graphs against the
   torch model with onnxruntime-node).

`convert_checkpoint()` returns the merged torch model and the report; the CLI adds the export.
The tests (`training/tests/test_convert.py`) run this same code on fake downloads in the
released layout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .safetensors_io import SafetensorsFile
from .sqllava.model import SQLLaVA, SQLLaVAConfig, TextConfig, VisionConfig

# Hard-coded in the reference (`multimodal_projector/builder.py`: Clustering(D, H, 256, 2)).
NUM_PROTOTYPES = 256
CLUSTER_ITERS = 2

VISION_PREFIX = "model.vision_tower.vision_tower."  # our name of CLIPVisionModel's `vision_model.*`
PROGRESS_MIN_BYTES = 256 * 1024 * 1024  # files at least this big get a progress line

Log = Callable[[str], None]


class ConversionError(RuntimeError):
    """The downloads do not fit the model; `problems` names every offending key or field."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        text = message
        if self.problems:
            shown = self.problems[:200]
            text += "\n" + "\n".join("  - " + p for p in shown)
            if len(self.problems) > len(shown):
                text += f"\n  ... and {len(self.problems) - len(shown)} more"
        super().__init__(text)


# ----------------------------------------------------------------------------- small helpers

def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return f"{n} B"


def human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


def read_json(path: Path) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None


def key_pattern(key: str) -> str:
    """`model.layers.12.self_attn.rotary_emb.inv_freq` -> `model.layers.*.self_attn.rotary_emb.inv_freq`."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", key)


class Progress:
    """Per-file progress: one line per 10 % when not on a terminal, an updating line when on one."""

    def __init__(self, label: str, total: int, log: Log, enabled: bool):
        self.label, self.total, self.log, self.enabled = label, max(total, 1), log, enabled
        self.done = 0
        self.tensors = 0
        self.t0 = time.time()
        self.next_step = 10
        self.tty = enabled and log is print and sys.stdout.isatty()

    def add(self, nbytes: int, tensors: int = 1) -> None:
        self.done += nbytes
        self.tensors += tensors
        if not self.enabled:
            return
        pct = 100.0 * self.done / self.total
        if self.tty:
            sys.stdout.write(f"\r    {self.label}: {pct:5.1f}%  {human_bytes(self.done)} / "
                             f"{human_bytes(self.total)}  {self.tensors} tensors  {time.time() - self.t0:.0f} s")
            sys.stdout.flush()
        elif pct >= self.next_step and pct < 100:
            self.log(f"    {self.label}: {int(pct // 10) * 10:3d}%  {human_bytes(self.done)} / "
                     f"{human_bytes(self.total)}  {self.tensors} tensors  {time.time() - self.t0:.0f} s")
            self.next_step = int(pct // 10) * 10 + 10

    def finish(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
        self.log(f"    {self.label}: {self.tensors} tensors, {human_bytes(self.done)} "
                 f"in {time.time() - self.t0:.1f} s")


# ----------------------------------------------------------------------------- reading checkpoints

def load_pickle(path: Path, log: Log, *, allow_unsafe: bool = False,
                progress_min_bytes: int = PROGRESS_MIN_BYTES) -> Dict[str, torch.Tensor]:
    """torch.load of a `.bin` state dict (bf16 kept), restricted to tensors unless `allow_unsafe`.

    torch 1.13 reads the whole file into memory; progress is counted per storage as the
    unpickler materialises it.
    """
    size = path.stat().st_size
    prog = Progress(path.name, size, log, size >= progress_min_bytes)

    def on_storage(storage, location):
        try:
            prog.add(int(storage.nbytes()))
        except Exception:  # pragma: no cover - progress is cosmetic
            pass
        return storage

    try:
        sd = torch.load(str(path), map_location=on_storage, weights_only=not allow_unsafe)
    except Exception as e:
        if not allow_unsafe and isinstance(e, pickle.UnpicklingError):
            raise ConversionError(
                f"{path}: torch.load(weights_only=True) refused it ({e}). The file holds more than "
                "tensors; if you trust it, rerun with --allow-unsafe-pickle") from None
        raise ConversionError(f"{path}: cannot be read as a torch checkpoint: {e}") from None
    prog.tensors = len(sd) if isinstance(sd, dict) else 0
    prog.done = size
    prog.finish()
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors", bad)
    return sd


def iter_file(path: Path, log: Log, *, allow_unsafe: bool = False,
              progress_min_bytes: int = PROGRESS_MIN_BYTES) -> Iterator[Tuple[str, torch.Tensor]]:
    """(key, tensor) of one checkpoint file, releasing each tensor's memory after use where possible."""
    if path.suffix == ".safetensors":
        with SafetensorsFile(str(path)) as f:
            total = sum(f.nbytes(k) for k in f.keys())
            prog = Progress(path.name, total, log, path.stat().st_size >= progress_min_bytes)
            for k in f.keys():
                t = f.torch(k)
                prog.add(f.nbytes(k))
                yield k, t
            prog.finish()
    else:
        sd = load_pickle(path, log, allow_unsafe=allow_unsafe, progress_min_bytes=progress_min_bytes)
        for k in list(sd.keys()):
            yield k, sd.pop(k)  # the shard shrinks as the model fills


@dataclass
class WeightFiles:
    """The weight files of one download: `files` in order, `index` = weight_map or None."""
    what: str
    files: List[Path]
    index: Optional[Dict[str, str]] = None
    index_file: Optional[Path] = None

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def find_weights(directory: Path, what: str) -> WeightFiles:
    """Finds `model.safetensors[.index.json]` or `pytorch_model.bin[.index.json]` (safetensors first)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"{what}: {directory} is not a directory")
    candidates = [("model.safetensors.index.json", "model.safetensors"),
                  ("pytorch_model.bin.index.json", "pytorch_model.bin")]
    for index_name, single in candidates:
        index_path = directory / index_name
        if index_path.is_file():
            index = read_json(index_path).get("weight_map")
            if not isinstance(index, dict) or not index:
                raise ConversionError(f"{index_path}: no weight_map")
            names = list(OrderedDict.fromkeys(index.values()))
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise ConversionError(f"{what}: {index_path.name} names shard files that are not there "
                                      "(incomplete download?)", missing)
            return WeightFiles(what, [directory / n for n in sorted(names)], index, index_path)
        if (directory / single).is_file():
            return WeightFiles(what, [directory / single])
    found = sorted(p.name for p in directory.iterdir())
    raise ConversionError(f"{what}: no model.safetensors[.index.json] or pytorch_model.bin[.index.json] "
                          f"in {directory}; it holds: {', '.join(found) or '(nothing)'}")


# ----------------------------------------------------------------------------- config

LLAMA_DEFAULTS = {"num_key_value_heads": None, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
                  "max_position_embeddings": 2048}
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
                        "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}


def build_config(sq: dict, clip: dict) -> Tuple[SQLLaVAConfig, List[str]]:
    """SQLLaVAConfig from the SQ-LLaVA config.json and the CLIP tower's config.json; plus notes."""
    notes: List[str] = []
    problems: List[str] = []

    def need(d: dict, k: str, where: str):
        if k not in d:
            problems.append(f"{where}: field {k!r} missing")
            return None
        return d[k]

    def opt(d: dict, k: str, default, where: str):
        if k in d and d[k] is not None:
            return d[k]
        if default is not None:
            notes.append(f"{where}: {k} not given, using the transformers default {default}")
        return default

    w = "config.json"
    for k, want in (("mm_projector_type", "cluster"),):
        if sq.get(k) != want:
            problems.append(f"{w}: {k} is {sq.get(k)!r}; this converter handles {want!r} (SQ-LLaVA's prototype extractor)")
    if sq.get("mm_vision_select_feature", "patch") != "patch":
        problems.append(f"{w}: mm_vision_select_feature {sq.get('mm_vision_select_feature')!r} (only 'patch' is supported)")
    for k in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if sq.get(k):
            problems.append(f"{w}: {k} is true (extra image tokens are not supported)")
    if sq.get("rope_scaling"):
        problems.append(f"{w}: rope_scaling {sq['rope_scaling']!r} is not supported")
    if sq.get("tie_word_embeddings"):
        problems.append(f"{w}: tie_word_embeddings is true (LLaMA/Vicuna has a separate lm_head)")
    if sq.get("hidden_act", "silu") != "silu":
        problems.append(f"{w}: hidden_act {sq.get('hidden_act')!r} (LLaMA uses 'silu')")

    heads = need(sq, "num_attention_heads", w)
    text = dict(
        vocab_size=need(sq, "vocab_size", w),
        hidden_size=need(sq, "hidden_size", w),
        intermediate_size=need(sq, "intermediate_size", w),
        num_layers=need(sq, "num_hidden_layers", w),
        num_heads=heads,
        num_kv_heads=opt(sq, "num_key_value_heads", heads, w),
        max_position_embeddings=opt(sq, "max_position_embeddings", 2048, w),
        rms_norm_eps=opt(sq, "rms_norm_eps", 1e-6, w),
        rope_theta=float(opt(sq, "rope_theta", 10000.0, w)),
    )
    select_layer = sq.get("mm_vision_select_layer")
    if select_layer is None:
        problems.append(f"{w}: field 'mm_vision_select_layer' missing")

    # CLIP: a CLIPVisionModel config (top level) or a full CLIPModel config (vision_config).
    wc = "vision config.json"
    v = clip.get("vision_config") if isinstance(clip.get("vision_config"), dict) else clip
    if v is not clip:
        notes.append(f"{wc}: full CLIPModel config; using its vision_config")
    vd = {k: opt(v, k, dflt, wc) for k, dflt in CLIP_VISION_DEFAULTS.items()}
    if vd["hidden_act"] != "quick_gelu":
        problems.append(f"{wc}: hidden_act {vd['hidden_act']!r} (the model implements quick_gelu)")
    if v.get("num_channels", 3) != 3:
        problems.append(f"{wc}: num_channels {v.get('num_channels')} (3 expected)")
    mm_hidden = sq.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vd["hidden_size"]:
        problems.append(f"{w}: mm_hidden_size {mm_hidden} != the CLIP tower's hidden_size {vd['hidden_size']} "
                        "(wrong vision tower?)")
    if problems:
        raise ConversionError("the configs do not describe a model this converter can build:", problems)
    if sq.get("image_aspect_ratio") not in (None, "pad"):
        notes.append(f"{w}: image_aspect_ratio {sq.get('image_aspect_ratio')!r}; the bundle pads to a square "
                     "(training used 'pad')")
    vision = VisionConfig(image_size=vd["image_size"], patch_size=vd["patch_size"], hidden_size=vd["hidden_size"],
                          intermediate_size=vd["intermediate_size"], num_layers=vd["num_hidden_layers"],
                          num_heads=vd["num_attention_heads"], layer_norm_eps=vd["layer_norm_eps"],
                          select_layer=int(select_layer))
    if not (1 <= vision.num_used_layers <= vision.num_layers):
        raise ConversionError(f"{w}: mm_vision_select_layer {select_layer} is out of range for "
                              f"{vision.num_layers} CLIP layers")
    cfg = SQLLaVAConfig(vision=vision, text=TextConfig(**text), num_prototypes=NUM_PROTOTYPES,
                        cluster_iters=CLUSTER_ITERS)
    if cfg.num_image_tokens < NUM_PROTOTYPES:
        notes.append(f"only {cfg.num_image_tokens} image tokens for {NUM_PROTOTYPES} prototypes")
    return cfg, notes


# ----------------------------------------------------------------------------- model construction

@contextlib.contextmanager
def no_weight_init():
    """Skips the random initialisation of Linear/Embedding/LayerNorm/Conv2d (every weight is loaded;
    a missing one is an error). Building a 7B model this way takes seconds and touches no memory."""
    classes = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Conv2d)
    saved = [(c, c.reset_parameters) for c in classes]
    try:
        for c in classes:
            c.reset_parameters = lambda self: None
        yield
    finally:
        for c, fn in saved:
            c.reset_parameters = fn


def build_empty_model(cfg: SQLLaVAConfig, dtype: torch.dtype = torch.float32) -> SQLLaVA:
    with no_weight_init():
        model = SQLLaVA(cfg)
    if dtype != torch.float32:
        model.to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- key mapping

# (regex on the checkpoint key, reason) for keys that are known and deliberately skipped
BASE_IGNORE = [
    (r"^model\.mm_projector\.", "ShareGPT4V's own projector; SQ-LLaVA's comes from non_lora_trainables.bin"),
    (r"(^|\.)rotary_emb\.inv_freq$", "RoPE buffer, recomputed by the model"),
    (r"^model\.vision_tower\.", "vision tower copy inside the LLM checkpoint; the reference loader "
                                "loads the tower from mm_vision_tower, as this converter does"),
]
CLIP_IGNORE = [
    (r"^vision_model\.embeddings\.position_ids$", "index buffer"),
    (r"^text_model\.", "CLIP text encoder (not used by LLaVA)"),
    (r"^(visual_projection|text_projection)\.", "CLIP projection heads (not used by LLaVA)"),
    (r"^logit_scale$", "CLIP contrastive temperature (not used by LLaVA)"),
]


def map_base_key(k: str) -> Tuple[Optional[str], Optional[str]]:
    """base LLM key -> (model key, None) or (None, reason it is skipped) or (None, None) = unexpected."""
    for pat, why in BASE_IGNORE:
        if re.search(pat, k):
            return None, why
    if k in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight") or k.startswith("model.layers."):
        return k, None
    return None, None


def map_clip_key(k: str) -> Tuple[Optional[str], Optional[str]]:
    for pat, why in CLIP_IGNORE:
        if re.search(pat, k):
            return None, why
    if k.startswith("vision_model."):
        return VISION_PREFIX + k, None
    return None, None


def strip_non_lora_key(k: str) -> str:
    """The reference loader's renaming: drop `base_model.`, then `model.` if `model.model.` is left."""
    k = k[len("base_model."):] if k.startswith("base_model.") else k
    if k.startswith("model.model."):
        k = k[len("model."):]
    return k


def map_projector_key(k: str) -> Tuple[Optional[str], Optional[str]]:
    k2 = strip_non_lora_key(k)
    if k2.startswith("model.mm_projector."):
        return k2, None
    return None, None


# ----------------------------------------------------------------------------- the loading pass

@dataclass
class PartReport:
    what: str
    location: str
    files: List[Tuple[str, int]] = field(default_factory=list)  # (name, bytes)
    loaded: int = 0
    loaded_params: int = 0
    dtypes: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, List[str]] = field(default_factory=dict)  # reason -> keys

    def skipped_summary(self) -> List[str]:
        out = []
        for why, keys in self.skipped.items():
            pats = OrderedDict()
            for k in keys:
                pats[key_pattern(k)] = pats.get(key_pattern(k), 0) + 1
            shown = ", ".join(f"{p}" + (f" (x{n})" if n > 1 else "") for p, n in list(pats.items())[:6])
            if len(pats) > 6:
                shown += f", ... ({len(pats) - 6} more patterns)"
            out.append(f"{len(keys)} key{'s' if len(keys) != 1 else ''} skipped: {shown} -- {why}")
        return out


class Loader:
    """Copies checkpoint tensors into the model and records every problem (reported together)."""

    def __init__(self, model: SQLLaVA, log: Log):
        self.model = model
        self.log = log
        self.state = model.state_dict(keep_vars=True)  # persistent params and buffers, by name
        self.source: Dict[str, str] = {}  # model key -> where it came from
        self.problems: List[str] = []

    def put(self, part: PartReport, where: str, ckpt_key: str, target: str, t: torch.Tensor) -> None:
        if target not in self.state:
            self.problems.append(f"unexpected key {ckpt_key!r} in {where} (no model parameter {target!r})")
            return
        dst = self.state[target]
        if tuple(t.shape) != tuple(dst.shape):
            self.problems.append(f"wrong shape for {ckpt_key!r} in {where}: {list(t.shape)}, "
                                 f"the model needs {list(dst.shape)} for {target!r}")
            return
        if target in self.source:
            self.problems.append(f"{ckpt_key!r} in {where} loads {target!r} a second time "
                                 f"(already loaded from {self.source[target]})")
            return
        if not t.is_floating_point():
            self.problems.append(f"{ckpt_key!r} in {where} has dtype {t.dtype}, a float tensor is needed")
            return
        with torch.no_grad():
            dst.copy_(t)
        self.source[target] = where
        part.loaded += 1
        part.loaded_params += t.numel()
        name = str(t.dtype).replace("torch.", "")
        part.dtypes[name] = part.dtypes.get(name, 0) + 1

    def load_files(self, part: PartReport, wf: WeightFiles,
                   mapper: Callable[[str], Tuple[Optional[str], Optional[str]]], **read_kw) -> None:
        self.log(f"  {part.what}: {len(wf.files)} file(s), {human_bytes(wf.nbytes)} from {part.location}")
        for path in wf.files:
            part.files.append((path.name, path.stat().st_size))
            seen = set()
            for k, t in iter_file(path, self.log, **read_kw):
                seen.add(k)
                if wf.index is not None and wf.index.get(k) != path.name:
                    self.problems.append(f"{k!r} is in {path.name} but {wf.index_file.name} "
                                         f"{'puts it in ' + wf.index[k] if k in wf.index else 'does not list it'}")
                target, why = mapper(k)
                if target is None:
                    if why is None:
                        self.problems.append(f"unexpected key {k!r} in {wf.what} ({path.name})")
                    else:
                        part.skipped.setdefault(why, []).append(k)
                    continue
                self.put(part, f"{wf.what} ({path.name})", k, target, t)
            if wf.index is not None:
                lost = [k for k, f in wf.index.items() if f == path.name and k not in seen]
                for k in lost:
                    self.problems.append(f"{k!r} is listed in {wf.index_file.name} for {path.name} "
                                         "but that file does not hold it")

    def missing(self) -> List[str]:
        return [k for k in self.state if k not in self.source]


# ----------------------------------------------------------------------------- LoRA

LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")


@dataclass
class LoraReport:
    what: str
    location: str
    file: str = ""
    r: int = 0
    alpha: float = 0.0
    scale: float = 0.0
    target_modules: Any = None
    merged: int = 0
    lora_params: int = 0
    b_nonzero: int = 0  # merged modules whose B has a non-zero entry
    rel_update_mean: float = 0.0  # mean over merged matrices of ||dW|| / ||W||
    rel_update_max: float = 0.0
    skipped: Dict[str, List[str]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def b_all_zero(self) -> bool:
        return self.merged > 0 and self.b_nonzero == 0


def read_adapter_config(directory: Path, what: str) -> dict:
    cfg = read_json(directory / "adapter_config.json")
    problems = []
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (LORA expected)")
    for k in ("r", "lora_alpha", "target_modules"):
        if cfg.get(k) in (None, "", []):
            problems.append(f"field {k!r} missing")
    if cfg.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out is true (not used by LLaMA/CLIP Linear layers; not supported)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias {cfg.get('bias')!r} (only 'none' is supported)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg.get('modules_to_save')!r} is not supported")
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            problems.append(f"{k} {cfg.get(k)!r} is not supported (one r and alpha for all modules)")
    for k in ("use_rslora", "use_dora"):
        if cfg.get(k):
            problems.append(f"{k} is true (not supported; the release uses plain LoRA)")
    if problems:
        raise ConversionError(f"{what}: {directory / 'adapter_config.json'} is not supported:", problems)
    return cfg


def find_adapter_weights(directory: Path, what: str) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise ConversionError(f"{what}: no adapter_model.bin or adapter_model.safetensors in {directory}")


def target_matches(peft_name: str, targets) -> bool:
    """PEFT's rule: a regex string must fullmatch the module name; a list entry must end it."""
    if isinstance(targets, str):
        return re.fullmatch(targets, peft_name) is not None
    return any(peft_name == t or peft_name.endswith("." + t) for t in targets)


def merge_lora(model: SQLLaVA, loader: Loader, directory: Path, what: str, *,
               to_model: Callable[[str], Tuple[Optional[str], Optional[str]]],
               scope: Callable[[str], Optional[str]],
               allow_unsafe: bool = False, progress_min_bytes: int = PROGRESS_MIN_BYTES,
               collect: Optional[Dict[str, torch.Tensor]] = None) -> LoraReport:
    """Merges one PEFT LoRA adapter into the model in place: W += (alpha/r) * B @ A (float32 math).

    to_model(module name in the file) -> (model module name, None) | (None, reason skipped) | (None, None).
    scope(model module name) -> the module's name as PEFT saw it, or None when the adapter
    cannot target that module. The modules in scope that the adapter config targets must all
    have A and B; anything else in the file is unexpected. `collect`, if given, receives the
    vision-tower LoRA tensors (merged or skipped) by `vision_model.*` name, for comparison.
    """
    cfg = read_adapter_config(directory, what)
    path = find_adapter_weights(directory, what)
    rep = LoraReport(what, str(directory), file=path.name, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                     target_modules=cfg["target_modules"])
    rep.scale = rep.alpha / rep.r
    loader.log(f"  {what}: {path.name} ({human_bytes(path.stat().st_size)}), r={rep.r}, "
               f"lora_alpha={cfg['lora_alpha']:g}, scale alpha/r = {rep.scale:g}")

    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    expected = {}
    for name in linear:
        peft_name = scope(name)
        if peft_name is not None and target_matches(peft_name, rep.target_modules):
            expected[name] = peft_name

    pairs: Dict[str, Dict[str, Tuple[str, torch.Tensor]]] = {}
    adapters = set()
    for k, t in iter_file(path, loader.log, allow_unsafe=allow_unsafe, progress_min_bytes=progress_min_bytes):
        m = LORA_KEY.match(k)
        if not m:
            loader.problems.append(f"unexpected key {k!r} in {what} ({path.name}): not a lora_A/lora_B weight")
            continue
        target, why = to_model(m.group("module"))
        if target is None:
            if why is None:
                loader.problems.append(f"unexpected key {k!r} in {what} ({path.name})")
            else:
                rep.skipped.setdefault(why, []).append(k)
                _collect(collect, m.group("module"), m.group("ab"), t)
            continue
        if target not in expected:
            detail = ("no such Linear layer in the model" if target not in linear else
                      "the adapter config does not target it")
            loader.problems.append(f"unexpected key {k!r} in {what} ({path.name}): {detail} ({target})")
            continue
        adapters.add(m.group("adapter"))
        slot = pairs.setdefault(target, {})
        if m.group("ab") in slot:
            loader.problems.append(f"{k!r} in {what}: a second lora_{m.group('ab')} for {target} "
                                   f"(first: {slot[m.group('ab')][0]!r})")
            continue
        slot[m.group("ab")] = (k, t)
    if len(adapters) > 1:
        loader.problems.append(f"{what}: several adapter names in one file: {sorted(map(str, adapters))}")

    for target in expected:
        have = pairs.get(target, {})
        for ab in "AB":
            if ab not in have:
                loader.problems.append(f"missing key for {what}: lora_{ab} of {target} "
                                       f"(e.g. {_lora_key_example(expected[target], ab, what)})")

    rels = []
    for target, have in pairs.items():
        if "A" not in have or "B" not in have:
            continue
        (ka, a), (kb, b) = have["A"], have["B"]
        lin = linear[target]
        out_f, in_f = lin.weight.shape
        ok = True
        if tuple(a.shape) != (rep.r, in_f):
            loader.problems.append(f"wrong shape for {ka!r} in {what}: {list(a.shape)}, expected [{rep.r}, {in_f}] "
                                   f"(r={rep.r} from adapter_config.json)")
            ok = False
        if tuple(b.shape) != (out_f, rep.r):
            loader.problems.append(f"wrong shape for {kb!r} in {what}: {list(b.shape)}, expected [{out_f}, {rep.r}] "
                                   f"(r={rep.r} from adapter_config.json)")
            ok = False
        if target + ".weight" not in loader.source:
            ok = False  # its base weight is already reported missing
        if not ok:
            continue
        with torch.no_grad():
            w = lin.weight.float()
            delta = (b.float() @ a.float()) * rep.scale
            wn = float(w.norm())
            rels.append(float(delta.norm()) / wn if wn > 0 else 0.0)
            lin.weight.copy_(w + delta)
        rep.merged += 1
        rep.lora_params += a.numel() + b.numel()
        if bool((b != 0).any()):
            rep.b_nonzero += 1
        _collect(collect, target, "A", a)
        _collect(collect, target, "B", b)
    if rels:
        rep.rel_update_mean = sum(rels) / len(rels)
        rep.rel_update_max = max(rels)
    return rep


def _lora_key_example(peft_name: str, ab: str, what: str) -> str:
    return f"base_model.model.{peft_name}.lora_{ab}.weight"


def _collect(into: Optional[Dict[str, torch.Tensor]], module: str, ab: str, t: torch.Tensor) -> None:
    if into is not None and "vision_model." in module:
        into[module[module.index("vision_model."):] + ".lora_" + ab] = t


def compare_vit_loras(main: Dict[str, torch.Tensor], vit: Dict[str, torch.Tensor]) -> Optional[str]:
    """How the main adapter's (skipped) vision-tower LoRA relates to Vit-lora/'s."""
    if not main:
        return None
    if set(main) != set(vit):
        return (f"the main adapter's {len(main)} vision-tower LoRA tensors (skipped) name other modules "
                f"than Vit-lora/'s {len(vit)}")
    same = sum(1 for k in main if main[k].shape == vit[k].shape and torch.equal(main[k].float(), vit[k].float()))
    if same == len(main):
        return f"the main adapter's {len(main)} vision-tower LoRA tensors (skipped) equal Vit-lora/'s"
    return (f"the main adapter's {len(main)} vision-tower LoRA tensors (skipped) differ from Vit-lora/'s "
            f"({same} equal); Vit-lora/ is what the reference merges")


def llm_lora_mapping(module: str) -> Tuple[Optional[str], Optional[str]]:
    """Main adapter: `base_model.model.<LlavaLlamaForCausalLM module>`."""
    if not module.startswith("base_model.model."):
        return None, None
    name = module[len("base_model.model."):]
    if name.startswith("model.vision_tower."):
        return None, ("LoRA on the vision tower inside the main adapter: the reference loader merges this "
                      "adapter before the tower is built (delay_load), so PEFT skips these keys; the ViT "
                      "LoRA is taken from Vit-lora/")
    return name, None


def llm_lora_scope(name: str) -> Optional[str]:
    return None if name.startswith("model.vision_tower.") else name


def vit_lora_mapping(module: str) -> Tuple[Optional[str], Optional[str]]:
    """Vit-lora adapter: `base_model.model.<CLIPVisionTower module>` (or of a bare CLIPVisionModel)."""
    if not module.startswith("base_model.model."):
        return None, None
    name = module[len("base_model.model."):]
    if name.startswith("vision_tower.vision_model."):
        return "model.vision_tower." + name, None
    if name.startswith("vision_model."):
        return VISION_PREFIX + name, None
    return None, None


def vit_lora_scope(name: str) -> Optional[str]:
    return name[len("model.vision_tower."):] if name.startswith(VISION_PREFIX) else None


# ----------------------------------------------------------------------------- the whole conversion

@dataclass
class ConversionReport:
    config: SQLLaVAConfig
    config_notes: List[str]
    parts: List[PartReport]
    loras: List[LoraReport]
    params: Dict[str, int]
    seconds: float = 0.0
    vit_lora_matches_main: Optional[str] = None

    def lines(self) -> List[str]:
        c = self.config
        out = ["conversion report",
               f"  LLM: {c.text.num_layers} layers, hidden {c.text.hidden_size}, heads {c.text.num_heads} "
               f"(kv {c.text.num_kv_heads}), vocab {c.text.vocab_size}",
               f"  vision: CLIP {c.vision.num_layers} layers, {c.vision.image_size}px / patch {c.vision.patch_size}, "
               f"uses layers 0..{c.vision.num_used_layers - 1} (mm_vision_select_layer {c.vision.select_layer}), "
               f"{c.num_image_tokens} image tokens, {c.num_prototypes} prototypes x {c.cluster_iters} iterations"]
        out += ["  note: " + n for n in self.config_notes]
        out.append("  parameters:")
        for k, v in self.params.items():
            out.append(f"    {k:<44} {v:>15,d}  ({human_count(v)})")
        for p in self.parts:
            dt = ", ".join(f"{k} x{v}" for k, v in sorted(p.dtypes.items()))
            out.append(f"  {p.what}: {p.loaded} tensors loaded ({human_count(p.loaded_params)} params; {dt})")
            out += ["    " + s for s in p.skipped_summary()]
        for l in self.loras:
            out.append(f"  {l.what}: r={l.r}, alpha={l.alpha:g}, scale alpha/r={l.scale:g}; merged {l.merged} "
                       f"matrices ({human_count(l.lora_params)} LoRA params); mean ||dW||/||W|| "
                       f"{l.rel_update_mean:.4g}, max {l.rel_update_max:.4g}")
            if l.merged:
                out.append(f"    B matrices all zero: {'YES - merging changes nothing' if l.b_all_zero else 'no'}"
                           f" ({l.b_nonzero} of {l.merged} non-zero)")
            for why, keys in l.skipped.items():
                pats = sorted({key_pattern(k) for k in keys})
                more = f" and {len(pats) - 1} similar patterns" if len(pats) > 1 else ""
                out.append(f"    {len(keys)} keys skipped ({pats[0]}{more}) -- {why}")
            out += ["    note: " + n for n in l.notes]
        if self.vit_lora_matches_main:
            out.append(f"  {self.vit_lora_matches_main}")
        out.append(f"  took {self.seconds:.1f} s")
        return out

    def to_dict(self) -> dict:
        import dataclasses
        return {
            "config": dataclasses.asdict(self.config),
            "config_notes": self.config_notes,
            "parameters": self.params,
            "parts": [{"what": p.what, "location": p.location, "files": [{"name": n, "bytes": b} for n, b in p.files],
                       "tensors": p.loaded, "params": p.loaded_params, "dtypes": p.dtypes,
                       "skipped": {why: len(keys) for why, keys in p.skipped.items()}} for p in self.parts],
            "lora": [{"what": l.what, "location": l.location, "file": l.file, "r": l.r, "lora_alpha": l.alpha,
                      "scale": l.scale, "target_modules": l.target_modules, "merged_matrices": l.merged,
                      "lora_params": l.lora_params, "b_all_zero": l.b_all_zero, "b_nonzero_matrices": l.b_nonzero,
                      "rel_update_mean": l.rel_update_mean, "rel_update_max": l.rel_update_max,
                      "skipped": {why: len(keys) for why, keys in l.skipped.items()}} for l in self.loras],
            "vit_lora_vs_main_adapter": self.vit_lora_matches_main,
            "seconds": round(self.seconds, 1),
        }


def parameter_counts(model: SQLLaVA) -> Dict[str, int]:
    cfg = model.cfg
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    vm = model.model.vision_tower.vision_tower.vision_model
    used = (n(vm.embeddings) + n(vm.pre_layrnorm)
            + sum(n(l) for l in vm.encoder.layers[: cfg.vision.num_used_layers]))
    counts = OrderedDict()
    counts["vision tower (CLIP, all layers)"] = n(model.model.vision_tower)
    counts["vision tower (used by the model)"] = used
    counts["projector (prototypes + MLP)"] = n(model.model.mm_projector)
    counts["LLM embed_tokens"] = n(model.model.embed_tokens)
    counts["LLM decoder layers + norm"] = sum(n(l) for l in model.model.layers) + n(model.model.norm)
    counts["LLM lm_head"] = n(model.lm_head)
    counts["total"] = n(model)
    counts["total exported (unused CLIP layers dropped)"] = counts["total"] - counts["vision tower (CLIP, all layers)"] + used
    return counts


def resolve_vision_dir(sq_cfg: dict, vision_dir: Optional[Path], sq_dir: Path) -> Path:
    name = sq_cfg.get("mm_vision_tower") or sq_cfg.get("vision_tower")
    if vision_dir is not None:
        return Path(vision_dir)
    for cand in ([Path(name), sq_dir.parent / Path(name).name] if name else []):
        if cand.is_dir() and (cand / "config.json").is_file():
            return cand
    raise ConversionError(f"pass --vision: the CLIP tower named in config.json (mm_vision_tower = {name!r}) "
                          "is not a local directory")


def convert_checkpoint(sq_llava_dir, base_dir, vision_dir=None, vit_lora_dir=None, *, use_vit_lora: bool = True,
                       dtype: torch.dtype = torch.float32, log: Log = print, allow_unsafe_pickle: bool = False,
                       progress_min_bytes: int = PROGRESS_MIN_BYTES) -> Tuple[SQLLaVA, ConversionReport]:
    """Loads and merges the three downloads into one `SQLLaVA` (eval mode, no grads).

    sq_llava_dir: ZachSun/sqllava-lora-{7b,13b} (config.json, adapter_*, non_lora_trainables.bin,
    Vit-lora/). base_dir: the ShareGPT4V-{7B,13B} LLM. vision_dir: the CLIP tower (default:
    config.json's mm_vision_tower when it is a local directory). Raises ConversionError naming
    every unexpected, missing or wrongly shaped key.
    """
    t0 = time.time()
    sq_dir, base_dir = Path(sq_llava_dir), Path(base_dir)
    sq_cfg = read_json(sq_dir / "config.json")
    vision_dir = resolve_vision_dir(sq_cfg, vision_dir, sq_dir)
    clip_cfg = read_json(vision_dir / "config.json")
    cfg, notes = build_config(sq_cfg, clip_cfg)
    named_tower = sq_cfg.get("mm_vision_tower")
    if named_tower and Path(named_tower).name != vision_dir.name:
        notes.append(f"config.json names the vision tower {named_tower!r}; using {vision_dir} as given")
    if use_vit_lora:
        vit_lora_dir = Path(vit_lora_dir) if vit_lora_dir is not None else sq_dir / "Vit-lora"
        if not (vit_lora_dir / "adapter_config.json").is_file():
            raise ConversionError(f"no ViT LoRA at {vit_lora_dir} (adapter_config.json missing); pass "
                                  "--vit-lora DIR, or --no-vit-lora to convert without it")
    # Check the small adapter configs before the long loads.
    read_adapter_config(sq_dir, "LLM LoRA")
    if use_vit_lora:
        read_adapter_config(vit_lora_dir, "ViT LoRA")
    non_lora = sq_dir / "non_lora_trainables.bin"
    if not non_lora.is_file():
        raise ConversionError(f"{non_lora} not found (the projector weights)")
    base_files = find_weights(base_dir, "base LLM")
    vision_files = find_weights(vision_dir, "vision tower")

    log(f"model: {cfg.text.num_layers}-layer LLaMA (hidden {cfg.text.hidden_size}), CLIP {cfg.vision.num_layers} "
        f"layers at {cfg.vision.image_size}px, {cfg.num_prototypes} prototypes; float32 merge, stored as "
        f"{str(dtype).replace('torch.', '')}")
    model = build_empty_model(cfg, dtype)
    loader = Loader(model, log)
    kw = dict(allow_unsafe=allow_unsafe_pickle, progress_min_bytes=progress_min_bytes)

    parts = [PartReport("base LLM", str(base_dir)), PartReport("vision tower", str(vision_dir)),
             PartReport("projector", str(non_lora))]
    log("loading weights")
    loader.load_files(parts[0], base_files, map_base_key, **kw)
    loader.load_files(parts[1], vision_files, map_clip_key, **kw)
    loader.load_files(parts[2], WeightFiles("non_lora_trainables.bin", [non_lora]), map_projector_key, **kw)
    for k in loader.missing():
        where = ("vision tower" if k.startswith("model.vision_tower.") else
                 "non_lora_trainables.bin" if k.startswith("model.mm_projector.") else "base LLM")
        loader.problems.append(f"missing key {k!r} (expected in the {where})")

    log("merging LoRA")
    main_vit: Dict[str, torch.Tensor] = {}
    loras = [merge_lora(model, loader, sq_dir, "LLM LoRA", to_model=llm_lora_mapping, scope=llm_lora_scope,
                        collect=main_vit, **kw)]
    vit_match = None
    if use_vit_lora:
        vit: Dict[str, torch.Tensor] = {}
        loras.append(merge_lora(model, loader, vit_lora_dir, "ViT LoRA", to_model=vit_lora_mapping,
                                scope=vit_lora_scope, collect=vit, **kw))
        vit_match = compare_vit_loras(main_vit, vit)
    else:
        log("  ViT LoRA: skipped (--no-vit-lora)")

    if loader.problems:
        raise ConversionError(f"the checkpoint does not match the model ({len(loader.problems)} problems); "
                              "nothing was exported:", loader.problems)
    report = ConversionReport(cfg, notes, parts, loras, parameter_counts(model), time.time() - t0, vit_match)
    return model, report


# ----------------------------------------------------------------------------- tokenizer and CLI

def tokenizer_json_for(base_dir: Path, given: Optional[Path], work_dir: Path, log: Log) -> Path:
    """tokenizer.json for the bundle, written into `work_dir` with a tokenizer_config.json beside it.

    Source: `given` (a tokenizer.json, or a SentencePiece tokenizer.model), else the base LLM's
    `tokenizer.model` (the slow tokenizer the reference uses), else its `tokenizer.json`.
    A tokenizer.model is converted with training/sqllava/tokenizer_build.py.
    """
    from .sqllava import tokenizer_build as tb

    if given is not None:
        src = Path(given)
    elif (base_dir / "tokenizer.model").is_file():
        src = base_dir / "tokenizer.model"
    elif (base_dir / "tokenizer.json").is_file():
        src = base_dir / "tokenizer.json"
    else:
        raise ConversionError(f"no tokenizer.model or tokenizer.json in {base_dir} (pass --tokenizer)")
    if not src.is_file():
        raise ConversionError(f"tokenizer {src} not found")
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "tokenizer.json"
    if src.suffix == ".json":
        tj = read_json(src)
        log(f"tokenizer: {src}")
    else:
        log(f"tokenizer: converting {src} to tokenizer.json")
        try:
            tj = tb.tokenizer_json_from_sentencepiece(src)
        except Exception as e:
            raise ConversionError(f"cannot convert {src}: {e}") from None
    tb.dump_json(tj, out)
    tb.dump_json(tb.make_tokenizer_config(), work_dir / "tokenizer_config.json")
    vocab = tj.get("model", {}).get("vocab", {})
    log(f"  {len(vocab)} pieces, {len(tj.get('model', {}).get('merges', []))} merges")
    if tb.DEFAULT_TOKENIZER_JSON.is_file():
        same = read_json(tb.DEFAULT_TOKENIZER_JSON) == json.loads(out.read_text(encoding="utf-8"))
        log(f"  identical to {tb.DEFAULT_TOKENIZER_JSON.relative_to(tb.REPO_ROOT)} (Meta's LLaMA tokenizer): "
            f"{'yes' if same else 'no'}")
    return out


def default_name(cfg: SQLLaVAConfig) -> str:
    sizes = {(4096, 32): "sq-llava-7b", (5120, 40): "sq-llava-13b"}
    return sizes.get((cfg.text.hidden_size, cfg.text.num_layers), "sq-llava")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.convert", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sq-llava", required=True, type=Path,
                    help="ZachSun/sqllava-lora-7b (or -13b): config.json, adapter_model.bin, "
                         "non_lora_trainables.bin, Vit-lora/")
    ap.add_argument("--base", required=True, type=Path,
                    help="the base LLM, Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12_vicuna-7b-v1.5 (or 13B)")
    ap.add_argument("--vision", type=Path,
                    help="the CLIP tower named by config.json's mm_vision_tower (default: that name, if it is a "
                         "local directory)")
    ap.add_argument("--vit-lora", type=Path, help="default: <--sq-llava>/Vit-lora")
    ap.add_argument("--no-vit-lora", action="store_true", help="do not merge the ViT LoRA")
    ap.add_argument("--out", type=Path, help="bundle directory to write")
    ap.add_argument("--name", help="bundle name (default sq-llava-7b / sq-llava-13b by size)")
    ap.add_argument("--dtypes", default="fp32,fp16", help="weight variants to export (default fp32,fp16)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json, or a SentencePiece tokenizer.model to convert "
                                        "(default: the base's tokenizer.json or tokenizer.model)")
    ap.add_argument("--check-only", action="store_true", help="load, merge and report; export nothing")
    ap.add_argument("--no-ort-check", action="store_true",
                    help="skip the exporter's onnxruntime comparison against the torch model")
    ap.add_argument("--work-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="storage of the merged weights in memory (the merge itself is float32). Exporting "
                         "needs float32; bfloat16 halves the memory of a --check-only run")
    ap.add_argument("--report", type=Path, help="also write the report as JSON here")
    ap.add_argument("--allow-unsafe-pickle", action="store_true",
                    help="torch.load .bin files without weights_only=True (only for files you trust)")
    args = ap.parse_args(argv)
    if not args.check_only and args.out is None:
        ap.error("--out is required unless --check-only")
    if not args.check_only and args.work_dtype != "float32":
        ap.error("--work-dtype other than float32 only goes with --check-only (the exporter needs float32)")

    import tempfile

    with tempfile.TemporaryDirectory(prefix="curio-convert-") as tmp:
        try:
            return _run(args, Path(tmp))
        except ConversionError as e:
            print(f"conversion failed: {e}", file=sys.stderr)
            return 2


def _run(args: argparse.Namespace, tmp: Path) -> int:
    tok = None
    if not args.check_only:  # the tokenizer first: it is quick and may fail
        tok = tokenizer_json_for(args.base, args.tokenizer, tmp, print)
    model, report = convert_checkpoint(args.sq_llava, args.base, args.vision, args.vit_lora,
                                       use_vit_lora=not args.no_vit_lora, dtype=getattr(torch, args.work_dtype),
                                       allow_unsafe_pickle=args.allow_unsafe_pickle)
    for line in report.lines():
        print(line)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.check_only:
        print("--check-only: nothing exported")
        return 0

    from .export import export_bundle

    source = {"converter": "training/convert.py",
              "inputs": {"sq_llava": str(args.sq_llava), "base": str(args.base),
                         "vision": report.parts[1].location,
                         "vit_lora": None if args.no_vit_lora else str(args.vit_lora or args.sq_llava / "Vit-lora")},
              "conversion": report.to_dict()}
    name = args.name or default_name(report.config)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    print(f"exporting {name} ({', '.join(dtypes)}) to {args.out}")
    export_bundle(model, args.out, name=name, dtypes=dtypes, tokenizer_json_path=tok, source=source,
                  check=not args.no_ort_check)
    print(f"bundle written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
