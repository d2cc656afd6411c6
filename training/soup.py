"""Two runs' weights averaged (a model soup: fine-tunes of one model, as WiSE-FT averages a model
and its fine-tune), saved as a checkpoint `train --init-from ... --start <stage>` continues.

    /usr/bin/python3 -m training.soup runs/s7/D/lookup.pt runs/s7/C/lookup.pt --weight 0.5 --out runs/CD50.pt

`--weight` is the share of the second; the probes (vision, place) are the second's. Both must
have the same preset. Either may be a bundle folder (`models/sq-llava-micro`: its weights read
back from the ONNX files, no probes). Weights are rounded to fp16 (as the bundle ships) unless
`--fp32`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from training.bundle import load_any
from training.sqllava.configs import config_to_dict
from training.train import interpolate


def soup(first: dict, second: dict, weight: float, fp16: bool = True) -> dict:
    if first["config"] != second["config"]:
        raise ValueError("the two checkpoints have different model configurations")
    model = interpolate(first["model"], second["model"], weight)
    if fp16:
        model = {k: v.half().float() if v.is_floating_point() else v for k, v in model.items()}
    out = {k: v for k, v in second.items() if k in ("probe", "place", "config", "next_stage")}
    return {**out, "model": model}


def checkpoint(path: str) -> dict:
    """A training checkpoint, or a bundle folder's weights as one."""
    if Path(path).is_dir():
        model = load_any(path)
        return {"model": model.state_dict(), "config": config_to_dict(model.cfg)}
    return torch.load(path, map_location="cpu")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--weight", type=float, default=0.5, help="share of the second (0: the first, 1: the second)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: rounded to fp16)")
    args = ap.parse_args(argv)
    ck = soup(checkpoint(args.first), checkpoint(args.second), args.weight, fp16=not args.fp32)
    torch.save(ck, args.out)
    print(f"[soup] {1 - args.weight:g} x {args.first} + {args.weight:g} x {args.second} -> {args.out}")


if __name__ == "__main__":
    main()
