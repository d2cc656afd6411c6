"""The micro model's bundle: export from a training run, and load a bundle back into PyTorch.

`export_micro(final.pt, models/sq-llava-micro)` writes the bundle with `training.export`
(fp16 weights only: fp32 would be ~60 MB, over the 40 MB budget; every graph still takes and
returns float32) and checks its size. `load_bundle_model(dir)` rebuilds an `SQLLaVA` from the
bundle's ONNX initializers (the exporter keeps parameter names, `m.<name>`), so evaluation runs
on exactly the weights that ship.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from training.sqllava.configs import config_from_dict, config_to_dict
from training.sqllava.model import SQLLaVA

MAX_BUNDLE_BYTES = 40 * 1000 * 1000


def bundle_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def export_micro(final_pt: str, out_dir: str, name: str = "sq-llava-micro",
                 command: str = "python3 -m training.train --schedule gpu --export models/sq-llava-micro") -> Path:
    from training.export import export_bundle

    ck = torch.load(final_pt, map_location="cpu")
    cfg = config_from_dict(ck["config"])
    model = SQLLaVA(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    source = {
        "kind": "trained",
        "trainer": "training/train.py (shapes world, see training/README.md and /work/shared/WORLD.md)",
        "command": command,
        "variant": ck.get("variant", "full"),
        "training_minutes": round(ck["elapsed"] / 60, 1) if "elapsed" in ck else None,  # None: a soup of runs
        "schedule": ck.get("schedule"),
        "final_loss": (ck.get("history") or [{}])[-1].get("loss"),
        "git_sha": _git_sha(),
        "config": config_to_dict(cfg),
    }
    out = export_bundle(model, out_dir, name=name, dtypes=("fp16",), source=source, check=True)
    size = bundle_bytes(out)
    print(f"[bundle] {out}: {size / 1e6:.2f} MB", flush=True)
    if size >= MAX_BUNDLE_BYTES:
        raise SystemExit(f"bundle is {size / 1e6:.1f} MB, over the 40 MB budget")
    return out


def load_bundle_model(bundle_dir) -> SQLLaVA:
    """SQLLaVA with the bundle's weights (fp16 files widened to float32)."""
    d = Path(bundle_dir)
    meta = json.loads((d / "model.json").read_text())
    cfg = config_from_dict(meta["source"]["config"])
    model = SQLLaVA(cfg)
    dtype = meta["dtypes"][0]
    state: Dict[str, torch.Tensor] = {}
    for key in ("vision", "embed", "decoder"):
        g = onnx.load(str(d / meta[key]["files"][dtype]))
        for init in g.graph.initializer:
            if init.name.startswith("m."):
                name = init.name[2:]
                name = name[:-len("__fp16")] if name.endswith("__fp16") else name
                state[name] = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32).copy())
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    # parts no graph uses: CLIP layers past the selected one, post_layernorm, the projector's ln_1
    unused_ok = ("vision_model.post_layernorm", "mm_projector.ln_1")
    used_layers = cfg.vision.num_used_layers
    bad = [k for k in missing if not any(u in k for u in unused_ok)
           and not any(f"encoder.layers.{i}." in k for i in range(used_layers, cfg.vision.num_layers))]
    if bad:
        raise ValueError(f"bundle {d} lacks weights for {bad[:5]}...")
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_any(path) -> SQLLaVA:
    """A bundle folder or a training checkpoint (final.pt / ckpt.pt)."""
    p = Path(path)
    if p.is_dir():
        return load_bundle_model(p)
    ck = torch.load(str(p), map_location="cpu")
    model = SQLLaVA(config_from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()
