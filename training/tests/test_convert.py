"""`python -m training.convert` on fake downloads in the released layout.

The fakes have the released file names and key names (PEFT 0.4 `lora_A.weight`, and the newer
`lora_A.default.weight` in one variant), bf16 tensors, the `tiny` preset's dimensions, random
base weights and non-zero LoRA A and B for both the LLM and the ViT. The converted (merged)
model is compared with a model that applies the LoRA deltas unmerged, y = Wx + (alpha/r) B(Ax).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training import safetensors_io as st
from training.convert import ConversionError, convert_checkpoint, main
from training.sqllava.configs import PRESETS
from training.sqllava.model import SQLLaVA

REPO = Path(__file__).resolve().parents[2]
# The fakes have the `tiny` preset's dimensions; the converter builds K=256 prototypes and 2
# iterations whatever the size, as the reference builder does (Clustering(D, H, 256, 2)).
CFG = dataclasses.replace(PRESETS["tiny"], num_prototypes=256, cluster_iters=2)
LLM_R, LLM_ALPHA = 4, 8  # scale 2, as the 7B release (128/256)
VIT_R, VIT_ALPHA = 2, 3  # scale 1.5 (the 7B release: 32/64)
LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VIT_TARGETS = ["fc2", "fc1", "v_proj", "k_proj", "out_proj", "q_proj"]  # order as in the release


# ----------------------------------------------------------------------------- fake downloads

def released_config(cfg=CFG) -> dict:
    """config.json as the released ZachSun/sqllava-lora-* has it (LlavaConfig, transformers 4.31)."""
    t = cfg.text
    return {
        "_name_or_path": "./checkpoints/ShareGPT4V-7B_Pretrained_vit-large336-l12_vicuna-7b-v1.5",
        "architectures": ["LlavaLlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False, "hidden_act": "silu", "hidden_size": t.hidden_size,
        "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_position_embeddings, "mm_hidden_size": cfg.vision.hidden_size,
        "mm_projector_lr": 2e-05, "mm_projector_type": "cluster", "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": cfg.vision.select_layer,
        "mm_vision_tower": "Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12", "model_type": "llava",
        "num_attention_heads": t.num_heads, "num_hidden_layers": t.num_layers,
        "num_key_value_heads": t.num_kv_heads, "pad_token_id": 0, "pretraining_tp": 1,
        "rms_norm_eps": t.rms_norm_eps, "rope_scaling": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.31.0", "tune_mm_mlp_adapter": False,
        "use_cache": True, "use_mm_proj": True, "vocab_size": t.vocab_size,
    }


def clip_config(cfg=CFG, full_clip_model: bool = False) -> dict:
    v = cfg.vision
    vision = {"hidden_act": "quick_gelu", "hidden_size": v.hidden_size, "image_size": v.image_size,
              "intermediate_size": v.intermediate_size, "layer_norm_eps": v.layer_norm_eps,
              "num_attention_heads": v.num_heads, "num_channels": 3, "num_hidden_layers": v.num_layers,
              "patch_size": v.patch_size, "projection_dim": 16}
    if full_clip_model:
        return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
                "text_config": {"hidden_size": 16}, "vision_config": vision}
    return {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "torch_dtype": "float32",
            **vision}


def adapter_config(r, alpha, targets, base, dropout, task_type) -> dict:
    return {"auto_mapping": None if task_type else {"base_model_class": "CLIPVisionTower", "parent_library": "x"},
            "base_model_name_or_path": base, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
            "lora_alpha": alpha, "lora_dropout": dropout, "modules_to_save": None, "peft_type": "LORA",
            "r": r, "revision": None, "target_modules": targets, "task_type": task_type}


class Release:
    """Fake downloads: `base/`, `vision/`, `sqllava/` (with `Vit-lora/`) under `root`, plus the
    fp32 truths: `state` (every model weight, bf16-rounded) and `llm_lora` / `vit_lora`
    {model Linear name: (A, B)}."""

    def __init__(self, root: Path, fmt: str = "bin", seed: int = 0, adapter_suffix: str = "",
                 vit_b_zero: bool = False, full_clip: bool = False, cfg=CFG):
        self.root, self.fmt, self.cfg = root, fmt, cfg
        CFG = cfg  # (local) the dimensions of this fake
        self.base, self.vision, self.sq = root / "base", root / "vision", root / "sqllava"
        for d in (self.base, self.vision, self.sq / "Vit-lora"):
            d.mkdir(parents=True)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = SQLLaVA(CFG)
        with torch.no_grad():  # non-trivial norms and projector scalars
            for name, p in model.named_parameters():
                if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name:
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                elif name.endswith("sim_alpha"):
                    p.fill_(3.0)
                elif name.endswith("sim_beta"):
                    p.fill_(-0.5)
                elif name.endswith("class_embedding") or "position_embedding" in name:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
        self.state = {k: v.detach().bfloat16() for k, v in model.state_dict().items()}

        # base LLM, two shards + index, with ShareGPT4V's projector and RoPE buffers
        llm = {k: v for k, v in self.state.items() if not k.startswith(("model.vision_tower.", "model.mm_projector."))}
        d, h = CFG.vision.hidden_size, CFG.text.hidden_size
        llm["model.mm_projector.0.weight"] = torch.randn(h, d).bfloat16()
        llm["model.mm_projector.0.bias"] = torch.randn(h).bfloat16()
        llm["model.mm_projector.2.weight"] = torch.randn(h, h).bfloat16()
        llm["model.mm_projector.2.bias"] = torch.randn(h).bfloat16()
        for i in range(CFG.text.num_layers):
            llm[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(CFG.text.head_dim // 2)
        keys = list(llm)
        first = [k for k in keys if k.startswith("model.embed_tokens") or k.startswith("model.layers.0.")]
        shards = [{k: llm[k] for k in first}, {k: llm[k] for k in keys if k not in first}]
        self.write_sharded(self.base, shards)
        (self.base / "config.json").write_text(json.dumps({**released_config(cfg), "architectures": ["Share4VLlamaForCausalLM"]}))

        # CLIP tower
        vis = {k[len("model.vision_tower.vision_tower."):]: v for k, v in self.state.items()
               if k.startswith("model.vision_tower.")}
        vis["vision_model.embeddings.position_ids"] = torch.arange(CFG.vision.num_patches + 1)[None]
        if full_clip:
            vis["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
            vis["text_model.final_layer_norm.weight"] = torch.ones(16)
            vis["visual_projection.weight"] = torch.randn(16, d)
            vis["text_projection.weight"] = torch.randn(16, 16)
            vis["logit_scale"] = torch.tensor(4.6)
        if fmt == "safetensors":
            st.save(str(self.vision / "model.safetensors"), vis, metadata={"format": "pt"})
        else:
            torch.save(vis, self.vision / "pytorch_model.bin")
        (self.vision / "config.json").write_text(json.dumps(clip_config(cfg, full_clip_model=full_clip)))

        # SQ-LLaVA: config, projector, LLM LoRA (+ the tower's LoRA nested in it), ViT LoRA
        (self.sq / "config.json").write_text(json.dumps(released_config(cfg), indent=2))
        proj = {"base_model.model." + k: v for k, v in self.state.items() if k.startswith("model.mm_projector.")}
        torch.save(proj, self.sq / "non_lora_trainables.bin")
        sfx = adapter_suffix
        self.llm_lora: Dict[str, tuple] = {}
        self.vit_lora: Dict[str, tuple] = {}
        ad = {}
        for name, m in model.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith("model.layers.") and leaf in LLM_TARGETS:
                a = (torch.randn(LLM_R, m.in_features, generator=g) / m.in_features ** 0.5).bfloat16()
                b = (0.1 * torch.randn(m.out_features, LLM_R, generator=g)).bfloat16()
                self.llm_lora[name] = (a, b)
                ad[f"base_model.model.{name}.lora_A{sfx}.weight"] = a
                ad[f"base_model.model.{name}.lora_B{sfx}.weight"] = b
        vit_ad = {}
        for name, m in model.model.vision_tower.named_modules():  # CLIPVisionTower names
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in VIT_TARGETS:
                a = (torch.randn(VIT_R, m.in_features, generator=g) / m.in_features ** 0.5).bfloat16()
                b = (0.1 * torch.randn(m.out_features, VIT_R, generator=g)).bfloat16()
                if vit_b_zero:
                    b = torch.zeros_like(b)
                self.vit_lora["model.vision_tower." + name] = (a, b)
                vit_ad[f"base_model.model.{name}.lora_A{sfx}.weight"] = a
                vit_ad[f"base_model.model.{name}.lora_B{sfx}.weight"] = b
                # the main adapter also saves the (PEFT-wrapped) tower's LoRA tensors
                ad[f"base_model.model.model.vision_tower.base_model.model.{name}.lora_A{sfx}.weight"] = a
                ad[f"base_model.model.model.vision_tower.base_model.model.{name}.lora_B{sfx}.weight"] = b
        torch.save(ad, self.sq / "adapter_model.bin")
        (self.sq / "adapter_config.json").write_text(json.dumps(adapter_config(
            LLM_R, LLM_ALPHA, LLM_TARGETS, "./checkpoints/ShareGPT4V-7B_Pretrained", 0.05, "CAUSAL_LM")))
        torch.save(vit_ad, self.sq / "Vit-lora" / "adapter_model.bin")
        (self.sq / "Vit-lora" / "adapter_config.json").write_text(json.dumps(adapter_config(
            VIT_R, VIT_ALPHA, VIT_TARGETS, None, 0.2, None)))
        (self.sq / "Vit-lora" / "README.md").write_text("---\nlibrary_name: peft\n---\n")

    def write_sharded(self, directory: Path, shards, fmt: Optional[str] = None) -> None:
        fmt = fmt or self.fmt
        n = len(shards)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            if fmt == "safetensors":
                name = f"model-{i:05d}-of-{n:05d}.safetensors"
                st.save(str(directory / name), shard, metadata={"format": "pt"})
            else:
                name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
                torch.save(shard, directory / name)
            weight_map.update({k: name for k in shard})
        index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
        (directory / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))

    # -- editing a download (for the failure tests) ----------------------------------------

    def edit_base(self, fn) -> None:
        """fn(dict of all base tensors) edits them; rewrites the shards (keeps two)."""
        idx = self.base / ("model.safetensors.index.json" if self.fmt == "safetensors" else "pytorch_model.bin.index.json")
        files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        shards = [st.load_torch(str(self.base / f)) if self.fmt == "safetensors" else torch.load(self.base / f)
                  for f in files]
        for f in files:
            (self.base / f).unlink()
        merged = {}
        for s in shards:
            merged.update(s)
        fn(merged)
        keys = list(merged)
        self.write_sharded(self.base, [{k: merged[k] for k in keys[: len(keys) // 2]},
                                       {k: merged[k] for k in keys[len(keys) // 2:]}])

    def edit_bin(self, path: Path, fn) -> None:
        sd = torch.load(path)
        fn(sd)
        torch.save(sd, path)

    def convert(self, **kw):
        return convert_checkpoint(self.sq, self.base, self.vision, log=lambda s: None, progress_min_bytes=0, **kw)


# ----------------------------------------------------------------------------- reference: unmerged LoRA

class UnmergedLoRALinear(nn.Module):
    """y = W x + b + scale * B (A x), the LoRA applied as PEFT does at training time."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.a, self.b, self.scale = base, a.float(), b.float(), scale

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.a), self.b)


def reference_model(rel: Release, with_lora: bool = True, with_vit_lora: bool = True) -> SQLLaVA:
    m = SQLLaVA(CFG)
    m.load_state_dict({k: v.float() for k, v in rel.state.items()})
    m.eval()
    loras = ([(rel.llm_lora, LLM_ALPHA / LLM_R)] if with_lora else []) + \
            ([(rel.vit_lora, VIT_ALPHA / VIT_R)] if with_vit_lora else [])
    for table, scale in loras:
        for name, (a, b) in table.items():
            parent_name, leaf = name.rsplit(".", 1)
            parent = m.get_submodule(parent_name)
            setattr(parent, leaf, UnmergedLoRALinear(getattr(parent, leaf), a, b, scale))
    return m


def outputs(model: SQLLaVA, seed: int = 1) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, CFG.vision.image_size, CFG.vision.image_size, generator=g)
    ids = torch.randint(0, CFG.text.vocab_size, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    pos = torch.arange(7)[None].expand(2, 7)
    with torch.no_grad():
        image = model.encode_images(pixels)
        emb = model.embed(ids)
        logits, _ = model.decode(torch.cat([emb[:, :3], image, emb[:, 3:]], dim=1),
                                 torch.ones(2, 7 + image.shape[1], dtype=torch.long),
                                 torch.arange(7 + image.shape[1])[None].expand(2, -1))
        text_logits, _ = model.decode(emb, mask, pos)
    return {"image": image, "logits": logits, "text_logits": text_logits}


def settled(model: SQLLaVA) -> SQLLaVA:
    """The model with the micro preset's prototype tie break. The fakes pool 16 tokens into the
    converter's 256 centres, so every token's nearest centre is a tie between copies, and which
    copy wins follows the last bit of each row's matmul: on an AMD EPYC, merged and unmerged
    LoRA weights (or onnxruntime and PyTorch) pick different copies and the image tokens differ
    by 3e-2. The tie break settles every tie on the first copy alike, so the comparisons see the
    LoRA merge and the export, not the CPU's rounding. A released model (576 tokens) has no
    copies; the converter keeps the reference's rule."""
    for m in model.modules():
        if hasattr(m, "tie_break"):
            m.tie_break = 1e-3
    return model


@pytest.fixture
def settled_conversion(monkeypatch):
    """Converted models carry the tie break (`settled`), for the CLI's export check."""
    import training.convert as C
    build = C.build_config

    def with_tie_break(sq, clip):
        cfg, notes = build(sq, clip)
        return dataclasses.replace(cfg, cluster_tie_break=1e-3), notes

    monkeypatch.setattr(C, "build_config", with_tie_break)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("fmt,suffix,full_clip", [("bin", "", False), ("safetensors", ".default", True)])
def test_merged_equals_unmerged_lora(tmp_path, fmt, suffix, full_clip):
    rel = Release(tmp_path, fmt=fmt, adapter_suffix=suffix, full_clip=full_clip)
    model, report = rel.convert()
    assert model.cfg == CFG
    got = outputs(settled(model))
    want = outputs(settled(reference_model(rel)))
    no_lora = outputs(settled(reference_model(rel, with_lora=False, with_vit_lora=False)))
    for k in got:
        assert rel_err(got[k], want[k]) < 1e-5, (k, rel_err(got[k], want[k]))
        assert rel_err(no_lora[k], want[k]) > 1e-2, f"{k}: the LoRA deltas should matter in this test"

    llm, vit = report.loras
    assert (llm.r, llm.alpha, llm.scale, llm.merged) == (LLM_R, LLM_ALPHA, 2.0, len(rel.llm_lora))
    assert (vit.r, vit.alpha, vit.scale, vit.merged) == (VIT_R, VIT_ALPHA, 1.5, len(rel.vit_lora))
    assert not vit.b_all_zero and vit.b_nonzero == len(rel.vit_lora)
    assert sum(len(v) for v in llm.skipped.values()) == 2 * len(rel.vit_lora)  # the nested tower LoRA
    assert "equal Vit-lora" in report.vit_lora_matches_main
    base, vision, proj = report.parts
    assert sum(len(v) for v in base.skipped.values()) == 4 + CFG.text.num_layers  # projector + inv_freq
    assert base.dtypes == {"bfloat16": base.loaded}
    assert sum(len(v) for v in vision.skipped.values()) == (6 if full_clip else 1)
    assert proj.loaded == 14
    assert report.params["total"] == sum(p.numel() for p in model.parameters())
    text = "\n".join(report.lines())
    assert "scale alpha/r=2" in text and "scale alpha/r=1.5" in text
    assert "B matrices all zero: no" in text
    # the merged weights are exactly W + scale * B @ A in float32
    name, (a, b) = next(iter(rel.llm_lora.items()))
    w = rel.state[name + ".weight"].float() + 2.0 * (b.float() @ a.float())
    assert torch.equal(model.get_submodule(name).weight, w)


def test_vit_lora_b_zero_is_reported(tmp_path):
    rel = Release(tmp_path, vit_b_zero=True)
    model, report = rel.convert()
    assert report.loras[1].b_all_zero
    assert "B matrices all zero: YES" in "\n".join(report.lines())
    assert rel_err(outputs(model)["image"], outputs(reference_model(rel, with_vit_lora=False))["image"]) < 1e-5


def test_no_vit_lora_option(tmp_path):
    rel = Release(tmp_path)
    model, report = rel.convert(use_vit_lora=False)
    assert len(report.loras) == 1
    want = outputs(reference_model(rel, with_vit_lora=False))
    assert rel_err(outputs(model)["image"], want["image"]) < 1e-5


def test_bfloat16_work_dtype(tmp_path):
    """--work-dtype bfloat16 (for --check-only): same merge, stored rounded to bf16."""
    rel = Release(tmp_path)
    m32, _ = rel.convert()
    m16, report = rel.convert(dtype=torch.bfloat16)
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    assert not report.loras[1].b_all_zero and report.loras[0].merged == len(rel.llm_lora)
    for (n, a), (_, b) in zip(m32.named_parameters(), m16.named_parameters()):
        assert torch.equal(a.bfloat16(), b), n


def test_pickle_with_code_is_refused(tmp_path):
    import argparse
    rel = Release(tmp_path)
    rel.edit_bin(rel.sq / "non_lora_trainables.bin", lambda sd: sd.__setitem__("args", argparse.Namespace(x=1)))
    _fails(rel, "non_lora_trainables.bin", "--allow-unsafe-pickle")


def _fails(rel: Release, *needles: str) -> str:
    with pytest.raises(ConversionError) as e:
        rel.convert()
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} not in:\n{msg}"
    return msg


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_missing_key_in_base(tmp_path, fmt):
    rel = Release(tmp_path, fmt=fmt)
    rel.edit_base(lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    msg = _fails(rel, "missing key 'model.layers.1.mlp.up_proj.weight'", "nothing was exported")
    assert msg.count("\n  - ") == 1, msg  # exactly that one problem


def test_extra_key_in_base(tmp_path):
    rel = Release(tmp_path)
    rel.edit_base(lambda sd: sd.__setitem__("model.layers.0.self_attn.extra_proj.weight", torch.zeros(2, 2)))
    _fails(rel, "unexpected key 'model.layers.0.self_attn.extra_proj.weight'")


def test_wrong_shape_in_projector(tmp_path):
    rel = Release(tmp_path)
    rel.edit_bin(rel.sq / "non_lora_trainables.bin",
                 lambda sd: sd.__setitem__("base_model.model.model.mm_projector.mlp.0.weight", torch.zeros(3, 5)))
    _fails(rel, "wrong shape for 'base_model.model.model.mm_projector.mlp.0.weight'", "[3, 5]")


def test_missing_projector_and_clip_keys(tmp_path):
    rel = Release(tmp_path)
    rel.edit_bin(rel.sq / "non_lora_trainables.bin", lambda sd: sd.pop("base_model.model.model.mm_projector.sim_beta"))
    rel.edit_bin(rel.vision / "pytorch_model.bin", lambda sd: sd.pop("vision_model.post_layernorm.bias"))
    _fails(rel, "missing key 'model.mm_projector.sim_beta'",
           "missing key 'model.vision_tower.vision_tower.vision_model.post_layernorm.bias'")


def test_lora_missing_extra_and_wrong_shape(tmp_path):
    rel = Release(tmp_path)
    a_key = "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"
    b_key = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"

    def edit(sd):
        sd[a_key] = torch.zeros(LLM_R + 1, CFG.text.hidden_size).bfloat16()
        sd.pop(b_key)
        sd["base_model.model.lm_head.lora_A.weight"] = torch.zeros(LLM_R, CFG.text.hidden_size)

    rel.edit_bin(rel.sq / "adapter_model.bin", edit)
    rel.edit_bin(rel.sq / "Vit-lora" / "adapter_model.bin",
                 lambda sd: sd.__setitem__("base_model.model.vision_tower.vision_model.encoder.layers.0.mlp.fc3"
                                           ".lora_A.weight", torch.zeros(1)))
    _fails(rel, f"wrong shape for {a_key!r}", "lora_B of model.layers.0.mlp.down_proj",
           "'base_model.model.lm_head.lora_A.weight'", "the adapter config does not target it",
           "mlp.fc3.lora_A.weight", "no such Linear layer")


def test_index_names_missing_shard(tmp_path):
    rel = Release(tmp_path)
    (rel.base / "pytorch_model-00002-of-00002.bin").unlink()
    _fails(rel, "pytorch_model-00002-of-00002.bin", "incomplete download")


def test_cli_check_only_and_report(tmp_path, capsys):
    rel = Release(tmp_path / "dl")
    rc = main(["--sq-llava", str(rel.sq), "--base", str(rel.base), "--vision", str(rel.vision),
               "--check-only", "--report", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    for needle in ("scale alpha/r=2", "B matrices all zero: no", "total", "rotary_emb.inv_freq",
                   "ShareGPT4V's own projector", "pytorch_model-00001-of-00002.bin", "equal Vit-lora"):
        assert needle in out, needle
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["lora"][1]["b_all_zero"] is False and rep["lora"][0]["scale"] == 2.0

    rel.edit_bin(rel.sq / "non_lora_trainables.bin", lambda sd: sd.pop("base_model.model.model.mm_projector.c.bias"))
    rc = main(["--sq-llava", str(rel.sq), "--base", str(rel.base), "--vision", str(rel.vision), "--check-only"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing key 'model.mm_projector.c.bias'" in err


def _can_export() -> Optional[str]:
    if shutil.which("node") is None:
        return "node not found"
    if not (REPO / "node_modules" / "onnxruntime-node").is_dir():
        return "onnxruntime-node not installed"
    try:
        import onnx  # noqa: F401
        from training import export  # noqa: F401
        from training.sqllava import tokenizer_build  # noqa: F401
    except ImportError as e:
        return f"exporter unavailable: {e}"
    return None


@pytest.mark.skipif(_can_export() is not None, reason=str(_can_export()))
def test_cli_exports_checked_bundle(tmp_path, capsys, settled_conversion):
    """The whole CLI: tokenizer.model -> tokenizer.json, convert, export; the exporter's own check
    runs every graph with onnxruntime-node against the merged torch model."""
    from training.sqllava import tokenizer_build as tb

    rel = Release(tmp_path / "dl", fmt="safetensors")
    vocab = sorted(json.loads(tb.DEFAULT_TOKENIZER_JSON.read_text())["model"]["vocab"].items(), key=lambda kv: kv[1])
    (rel.base / "tokenizer.model").write_bytes(tb.sentencepiece_model_from_vocab([p for p, _ in vocab]))
    out = tmp_path / "bundle"
    rc = main(["--sq-llava", str(rel.sq), "--base", str(rel.base), "--vision", str(rel.vision),
               "--out", str(out), "--name", "sq-llava-fake", "--dtypes", "fp32,fp16"])
    text = capsys.readouterr().out
    assert rc == 0, text
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["name"] == "sq-llava-fake"
    assert manifest["source"]["conversion"]["lora"][0]["scale"] == 2.0
    assert (out / "tokenizer.json").is_file() and (out / "onnx" / "decoder_model_merged_fp16.onnx").is_file()


# ----------------------------------------------------------------------------- safetensors reader/writer

def test_safetensors_round_trip(tmp_path):
    x32 = torch.randn(3, 5)
    tensors = {
        "f32": x32, "f16": torch.randn(4).half(), "bf16": torch.randn(2, 3, 4).bfloat16(),
        "i64": torch.arange(-3, 3), "i32": torch.arange(6, dtype=torch.int32).view(2, 3),
        "u8": torch.arange(5, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 3), "f64": torch.randn(2, dtype=torch.float64),
    }
    path = tmp_path / "t.safetensors"
    st.save(str(path), tensors, metadata={"format": "pt"})
    f = st.SafetensorsFile(str(path))
    assert f.metadata == {"format": "pt"} and set(f.keys()) == set(tensors)
    assert f.dtype("bf16") == "BF16" and f.shape("bf16") == (2, 3, 4) and f.shape("scalar") == ()
    for k, t in tensors.items():
        back = f.torch(k)
        assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t), k
        arr = f.numpy(k)
        want = t.float().numpy() if k == "bf16" else t.numpy()
        assert arr.shape == want.shape and np.array_equal(arr, want), k
    assert f.numpy("bf16").dtype == np.float32
    # the layout: u64 header length, JSON, 8-byte aligned data, offsets relative to the data
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    b, e = header["f32"]["data_offsets"]
    assert np.array_equal(np.frombuffer(raw[8 + n + b: 8 + n + e], "<f4").reshape(3, 5), x32.numpy())


def test_bf16_bits_conversion():
    x = np.array([0.0, -0.0, 1.0, -2.5, 3.14159, 1e-40, 65504.0, np.inf, -np.inf], dtype=np.float32)
    bits = st.float32_to_bf16_bits(x)
    want = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bits, want)
    assert np.array_equal(st.bf16_bits_to_float32(bits), torch.from_numpy(x).bfloat16().float().numpy())
    assert np.isnan(st.bf16_bits_to_float32(st.float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


def test_safetensors_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    with pytest.raises(st.SafetensorsError, match="header length"):
        st.SafetensorsFile(str(p))
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(st.SafetensorsError, match="do not fit"):
        st.SafetensorsFile(str(p))
