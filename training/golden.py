"""Golden files for the TypeScript engine (test/fixtures/golden).

    python -m training.golden --out test/fixtures/golden

Builds the `tiny` preset with random weights (seed GOLDEN_SEED), exports it (fp32 + fp16, with
the self-check) to `<out>/bundle/`, writes a small non-square test image `<out>/image.png`
and `<out>/golden.json`: the reference preprocessing, image embeddings, prompt ids, first-step
logits and greedy continuations computed in PyTorch (KV-cache decode), and tokenizer cases.
The schema is in `golden_schema` below (and in the json's own "schema" field).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

from .export import CLIP_MEAN, CLIP_STD, EOS_ID, export_bundle, fp16_rounded, random_model
from .sqllava import conversation as conv
from .sqllava.configs import config_to_dict
from .sqllava.image import pad_color, preprocess
from .sqllava.model import SQLLaVA
from .sqllava.tokenizer import IMAGE_TOKEN_INDEX, load_default_tokenizer, tokenize_image_prompt

GOLDEN_PRESET = "tiny"
GOLDEN_SEED = 1234
NEW_TOKENS = 24
TOP_K = 20
SQ_ANSWER = "A red square and a green bar on a blue background."

TOKENIZER_CASES = [
    "Hello world",
    "hello, World!",
    "  two leading spaces",
    "trailing space ",
    "line one\nline two",
    "</s>VUSER:",
    "</s> ASSISTANT:",
    "<s>bos in text</s>",
    "USER: <image>\nWhat is this?",
    "The café serves crème brûlée.",
    "日本語のテキスト",
    "emoji 🦙🐍 and ☕",
    "numbers 1234567890 3.14159",
    "tabs\tand\tcontrol",
    "",
]


def golden_schema() -> Dict[str, str]:
    return {
        "bundle": "folder of the exported bundle, relative to golden.json",
        "model": "preset, seed, full config and init of the random-weight model",
        "image.file": "test PNG (RGB, width x height), relative to golden.json",
        "image.pad_color": "expand2square background, int(mean*255) as in the reference",
        "image.pixel_values": "{shape [1,3,S,S], sum, abs_sum, values: flat C-order float32} "
                              "after pad -> bicubic resize (PIL) -> /255 -> normalise",
        "image.image_features": "{shape [1,N,H], sum, abs_sum, values}: vision graph output for "
                                "those pixels (PyTorch fp32)",
        "prompts[]": "name, template, text, chunks (ids per text chunk, BOS only on the first), "
                     "input_ids (flat, -200 where the image goes), sequence_length (= sum of "
                     "chunks + N), first_step (last-position logits of the P=0 step over the "
                     "whole prompt: top_ids/top_values (top 20, descending), sum, l2, mean, "
                     "argmax, sample_ids/sample_values every 1000th id), greedy (new_tokens: "
                     "ids, top_logit per step, margin = top1 - top2 logit per step, EOS "
                     "suppressed; fp16_new_tokens: the same with fp16-rounded weights; text: "
                     "decoded)",
        "greedy_settings": "how the continuations were decoded",
        "tokenizer_cases[]": "{text, ids (with BOS), tokens}",
    }


def make_test_image(path: Path) -> Image.Image:
    """80x50 RGB: a horizontal gradient, a red square and a green bar on a blue-ish field."""
    w, h = 80, 50
    x = np.arange(w)[None, :, None]
    y = np.arange(h)[:, None, None]
    arr = np.zeros((h, w, 3), np.float64)
    arr[..., 0] = 30 + 2 * x[..., 0]
    arr[..., 1] = 40 + 3 * y[..., 0]
    arr[..., 2] = 200 - x[..., 0]
    arr[8:24, 10:26] = (230, 20, 30)       # red square
    arr[30:38, 40:75] = (20, 210, 60)      # green bar
    arr[40:50, 0:10] = (255, 255, 255)     # white corner
    arr[0:4, 70:80] = (0, 0, 0)            # black corner
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    img.save(path, format="PNG", optimize=True)
    return Image.open(path).convert("RGB")


def _f(x) -> float:
    return float(f"{float(x):.8g}")


def tensor_record(arr: np.ndarray, full: bool = True) -> dict:
    a = np.asarray(arr, np.float32)
    rec = {"shape": list(a.shape), "sum": _f(a.astype(np.float64).sum()),
           "abs_sum": _f(np.abs(a.astype(np.float64)).sum())}
    if full:
        rec["values"] = [_f(v) for v in a.reshape(-1)]
    return rec


def logits_record(row: np.ndarray) -> dict:
    row = np.asarray(row, np.float32)
    order = np.argsort(-row, kind="stable")[:TOP_K]
    d = row.astype(np.float64)
    return {"top_ids": [int(i) for i in order], "top_values": [_f(row[i]) for i in order],
            "argmax": int(order[0]), "sum": _f(d.sum()), "l2": _f(np.sqrt((d * d).sum())), "mean": _f(d.mean()),
            "sample_ids": list(range(0, row.shape[0], 1000)),
            "sample_values": [_f(row[i]) for i in range(0, row.shape[0], 1000)]}


@torch.no_grad()
def prompt_embeds(model: SQLLaVA, chunks: List[List[int]], image_features: torch.Tensor) -> torch.Tensor:
    parts = []
    for k, ids in enumerate(chunks):
        if k:
            parts.append(image_features[0])
        if ids:
            parts.append(model.embed(torch.tensor([ids]))[0])
    return torch.cat(parts, 0)[None]


@torch.no_grad()
def greedy(model: SQLLaVA, embeds: torch.Tensor, steps: int, suppress_eos: bool = True):
    """Greedy KV-cache decode: one P=0 step over the prompt, then one token per step."""
    n = embeds.shape[1]
    mask = torch.ones(1, n, dtype=torch.long)
    pos = torch.arange(n)[None]
    logits, past = model.decode(embeds, mask, pos)
    first = logits[0, -1].clone()
    ids, tops, margins = [], [], []
    row = logits[0, -1].clone()
    for step in range(steps):
        if suppress_eos:
            row[EOS_ID] = -float("inf")
        top2 = torch.topk(row, 2)
        nxt = int(top2.indices[0])
        ids.append(nxt)
        tops.append(_f(top2.values[0]))
        margins.append(_f(top2.values[0] - top2.values[1]))
        if step == steps - 1:
            break
        total = n + step + 1
        mask = torch.ones(1, total, dtype=torch.long)
        pos = torch.tensor([[total - 1]])
        logits, past = model.decode(model.embed(torch.tensor([[nxt]])), mask, pos, past)
        row = logits[0, -1].clone()
    return first.numpy(), ids, tops, margins


def build_prompts():
    v1 = conv.V1.prompt([("USER", conv.first_user_message(conv.DESCRIBE_BRIEF)), ("ASSISTANT", None)])
    sq = conv.V1_SQ.prompt([("USER", conv.first_user_message(conv.DESCRIBE_DETAILED)),
                            ("ASSISTANT", SQ_ANSWER), ("VUSER", None)])
    return [("v1_describe_brief", "v1", v1), ("v1_sq_ask", "v1_sq", sq)]


@torch.no_grad()
def sharpen(model: SQLLaVA, qk: float = 3.0, out: float = 2.0) -> SQLLaVA:
    """Scales the decoder's q/k (sharper attention) and v/o/down projections (stronger updates)
    of the random model, so that the continuation depends on the prompt and the cache: with the
    default init the two golden prompts share most of their greedy tokens."""
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(qk)
        layer.self_attn.k_proj.weight.mul_(qk)
        for lin in (layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
            lin.weight.mul_(out)
    return model


def build_golden(out_dir, seed: int = GOLDEN_SEED, check: bool = True) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = sharpen(random_model(GOLDEN_PRESET, seed))
    cfg = model.cfg
    export_bundle(model, out / "bundle", name=f"sq-llava-{GOLDEN_PRESET}-golden", dtypes=("fp32", "fp16"),
                  source={"preset": GOLDEN_PRESET, "random_init": True, "seed": seed,
                          "sharpen": {"qk": 3.0, "v_o_down": 2.0},
                          "built_by": "python -m training.golden"}, check=check)
    model16 = fp16_rounded(model)
    tok = load_default_tokenizer()

    img = make_test_image(out / "image.png")
    pixels = preprocess(img, cfg.vision.image_size, CLIP_MEAN, CLIP_STD, "bicubic")[None]
    with torch.no_grad():
        feats = model.encode_images(torch.from_numpy(pixels))
        feats16 = model16.encode_images(torch.from_numpy(pixels))

    prompts = []
    for name, template, text in build_prompts():
        chunks = tokenize_image_prompt(text, tok)
        flat: List[int] = []
        for k, c in enumerate(chunks):
            if k:
                flat.append(IMAGE_TOKEN_INDEX)
            flat.extend(c)
        embeds = prompt_embeds(model, chunks, feats)
        first, ids, tops, margins = greedy(model, embeds, NEW_TOKENS)
        _, ids16, _, _ = greedy(model16, prompt_embeds(model16, chunks, feats16), NEW_TOKENS)
        prompts.append({
            "name": name, "template": template, "text": text, "chunks": chunks, "input_ids": flat,
            "sequence_length": int(embeds.shape[1]),
            "first_step": logits_record(first),
            "greedy": {"new_tokens": ids, "top_logit": tops, "margin": margins,
                       "fp16_new_tokens": ids16, "text": tok.decode(ids)},
        })

    golden = {
        "schema": golden_schema(),
        "bundle": "bundle",
        "model": {"preset": GOLDEN_PRESET, "seed": seed, "config": config_to_dict(cfg),
                  "init": "torch.manual_seed(seed); SQLLaVA(PRESETS[preset]); then golden.sharpen "
                          "(decoder q/k weights x3, v/o/down x2)"},
        "image": {
            "file": "image.png", "width": img.size[0], "height": img.size[1],
            "sha256": hashlib.sha256((out / "image.png").read_bytes()).hexdigest(),
            "size": cfg.vision.image_size, "mean": CLIP_MEAN, "std": CLIP_STD, "resample": "bicubic",
            "pad": "square-mean", "pad_color": list(pad_color(CLIP_MEAN)),
            "pixel_values": tensor_record(pixels),
            "image_features": tensor_record(feats.numpy()),
        },
        "prompts": prompts,
        "greedy_settings": {"max_new_tokens": NEW_TOKENS, "suppress_eos": True, "eos_token_id": EOS_ID,
                            "temperature": 0, "dtype": "fp32 (fp16_new_tokens: fp16-rounded weights)",
                            "note": "EOS logit set to -inf before every argmax so that 24 tokens come out"},
        "tokenizer_cases": [{"text": s, "ids": tok.encode(s), "tokens": tok.tokens(tok.encode(s))}
                            for s in TOKENIZER_CASES],
    }
    (out / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return out / "golden.json"


def main(argv: Sequence[str] = None) -> None:
    ap = argparse.ArgumentParser(description="write the golden files for the TypeScript engine")
    ap.add_argument("--out", default="test/fixtures/golden")
    ap.add_argument("--seed", type=int, default=GOLDEN_SEED)
    args = ap.parse_args(argv)
    path = build_golden(args.out, args.seed)
    total = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"wrote {path} (fixture total {total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
