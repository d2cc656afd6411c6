"""The vision probe: dense, per-patch supervision that stands in for CLIP's pretraining.

A from-scratch micro ViT learns colour from captions in minutes but stays at chance on shape for
thousands of images (measured: training/README.md). The probe gives every patch token its own
targets, read straight off the scene geometry:

- the shape, colour and size of the object covering the patch (shape "none" where no object does),
- that object's place in the scene: its cell of the 3x3 grid ("top left" ... "bottom right"), which
  the decoder must name for "Where is ...?" and compare for "What is left of ...?",
- a 7x7 segmentation of the patch into shape classes (a shape's outline, pixel by pixel, is a far
  richer signal than one label per object),
- the background colour (from the mean token),
- for single-object curriculum images, the object's shape from the mean token.

The probe is thrown away after training; only the ViT it shaped is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from training.world.render import shape_outline
from training.world.scene import BACKGROUNDS, COLOURS, SHAPES, Scene, object_box

NONE = len(SHAPES)  # the "no object" class of the shape heads
SUB = 7  # segmentation cells per patch side


def padded_canvas(scene: Scene) -> Tuple[float, float, float, float]:
    """Width, height and offsets of the scene's canvas inside the unit square it is padded to."""
    w, h = (1.0, 1.0 / scene.aspect) if scene.aspect >= 1 else (scene.aspect, 1.0)
    return w, h, (1 - w) / 2, (1 - h) / 2


def cell_patches(scene: Scene, grid: int, cell: int) -> Tuple[int, ...]:
    """The patch tokens whose centre lies in grid cell `cell` (0..8) of the scene's canvas: where an
    empty cell is seen."""
    w, h, x0, y0 = padded_canvas(scene)
    row, col = divmod(cell, 3)
    inside = []
    for k in range(grid * grid):
        x, y = ((k % grid) + 0.5) / grid, ((k // grid) + 0.5) / grid
        if x0 + col * w / 3 <= x < x0 + (col + 1) * w / 3 and y0 + row * h / 3 <= y < y0 + (row + 1) * h / 3:
            inside.append(k)
    return tuple(inside)


@dataclass
class PatchTargets:
    shape: torch.Tensor  # [B,P] shape index or NONE
    colour: torch.Tensor  # [B,P] colour index or -100
    size: torch.Tensor  # [B,P] 0 small / 1 big or -100
    cell: torch.Tensor  # [B,P] the object's grid cell 0..8 or -100
    seg: torch.Tensor  # [B,P,SUB*SUB] shape index or NONE
    background: torch.Tensor  # [B]
    single: torch.Tensor  # [B] shape of a one-object scene, else -100
    objects: List[List[Tuple[int, int, int]]]  # per scene: (best patch, shape, colour) of each object


def scene_targets(scene: Scene, grid: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, List[Tuple[int, int, int]]]:
    w, h, x0, y0 = padded_canvas(scene)
    p = 1.0 / grid
    shape = torch.full((grid * grid,), NONE, dtype=torch.long)
    colour = torch.full((grid * grid,), -100, dtype=torch.long)
    size = torch.full((grid * grid,), -100, dtype=torch.long)
    cell = torch.full((grid * grid,), -100, dtype=torch.long)
    best = []
    n = grid * SUB
    seg = Image.new("L", (n, n), NONE)
    draw = ImageDraw.Draw(seg)
    for o in scene.ordered():
        cx, cy, side = object_box(scene, o, w, h)
        cx, cy = cx + x0, cy + y0
        labels = (SHAPES.index(o.shape), COLOURS.index(o.colour), int(o.size == "big"))
        half = side * 0.45
        bx0, bx1, by0, by1 = cx - half, cx + half, cy - half, cy + half
        area = min(p * p, (2 * half) ** 2)
        top, top_overlap = 0, -1.0
        for r in range(max(0, int(by0 / p)), min(grid - 1, int(by1 / p)) + 1):
            for c in range(max(0, int(bx0 / p)), min(grid - 1, int(bx1 / p)) + 1):
                overlap = (max(0.0, min(bx1, (c + 1) * p) - max(bx0, c * p))
                           * max(0.0, min(by1, (r + 1) * p) - max(by0, r * p)))
                k = r * grid + c
                if overlap > top_overlap:
                    top, top_overlap = k, overlap
                if overlap >= 0.25 * area:
                    shape[k], colour[k], size[k] = labels
                    cell[k] = o.cell
        shape[top], colour[top], size[top] = labels  # an object smaller than a patch still owns one
        cell[top] = o.cell
        best.append((top, labels[0], labels[1]))
        scx, scy, sside = cx * n, cy * n, side * n
        if o.shape == "circle":
            draw.ellipse([scx - sside / 2, scy - sside / 2, scx + sside / 2, scy + sside / 2], fill=labels[0])
        else:
            draw.polygon(shape_outline(o, scx, scy, sside), fill=labels[0])
    seg_t = torch.from_numpy(np.asarray(seg).astype(np.int64))
    seg_t = seg_t.view(grid, SUB, grid, SUB).permute(0, 2, 1, 3).reshape(grid * grid, SUB * SUB)
    return shape, colour, size, cell, seg_t, best


def patch_targets(scenes: Sequence[Scene], grid: int) -> PatchTargets:
    rows = [scene_targets(s, grid) for s in scenes]
    return PatchTargets(
        shape=torch.stack([r[0] for r in rows]), colour=torch.stack([r[1] for r in rows]),
        size=torch.stack([r[2] for r in rows]), cell=torch.stack([r[3] for r in rows]),
        seg=torch.stack([r[4] for r in rows]),
        background=torch.tensor([BACKGROUNDS.index(s.background) for s in scenes]),
        single=torch.tensor([SHAPES.index(s.objects[0].shape) if len(s.objects) == 1 else -100 for s in scenes]),
        objects=[r[5] for r in rows])


class PatchProbe(nn.Module):
    """Heads on the ViT's patch tokens (the features the projector receives)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU())
        self.shape = nn.Linear(2 * d, NONE + 1)
        self.colour = nn.Linear(2 * d, len(COLOURS))
        self.size = nn.Linear(2 * d, 2)
        self.cell = nn.Linear(2 * d, 9)
        self.seg = nn.Linear(2 * d, (NONE + 1) * SUB * SUB)
        self.background = nn.Linear(d, len(BACKGROUNDS))
        self.single = nn.Linear(d, len(SHAPES))

    def forward(self, tokens: torch.Tensor):
        h = self.mlp(self.norm(tokens))
        pooled = tokens.mean(1)
        return {"shape": self.shape(h), "colour": self.colour(h), "size": self.size(h), "cell": self.cell(h),
                "seg": self.seg(h).unflatten(-1, (NONE + 1, SUB * SUB)),
                "background": self.background(pooled), "single": self.single(pooled)}


def probe_loss(out: dict, t: PatchTargets, shape_weight: float = 2.0) -> torch.Tensor:
    occ = t.shape != NONE
    loss = (F.cross_entropy(out["shape"].flatten(0, 1), t.shape.flatten())
            + shape_weight * F.cross_entropy(out["shape"][occ], t.shape[occ])
            + F.cross_entropy(out["colour"][occ], t.colour[occ])
            + 0.5 * F.cross_entropy(out["size"][occ], t.size[occ])
            + 0.5 * F.cross_entropy(out["cell"][occ], t.cell[occ])
            + F.cross_entropy(out["seg"].flatten(0, 1), t.seg.flatten(0, 1))
            + 0.5 * F.cross_entropy(out["background"], t.background))
    if (t.single >= 0).any():
        loss = loss + F.cross_entropy(out["single"], t.single, ignore_index=-100)
    return loss


def object_accuracy(out: dict, t: PatchTargets) -> Tuple[float, float, float]:
    """Shape, colour and grid-cell accuracy per object, read at the patch that covers most of it."""
    n = shape_ok = colour_ok = cell_ok = 0
    shape_p, colour_p, cell_p = (out[k].argmax(-1).cpu() for k in ("shape", "colour", "cell"))
    cells = t.cell.cpu()
    for i, objs in enumerate(t.objects):
        for k, shape, colour in objs:
            n += 1
            shape_ok += int(shape_p[i, k] == shape)
            colour_ok += int(colour_p[i, k] == colour)
            cell_ok += int(cell_p[i, k] == cells[i, k])
    return shape_ok / max(1, n), colour_ok / max(1, n), cell_ok / max(1, n)
