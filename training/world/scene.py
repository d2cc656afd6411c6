"""Scenes of the shapes world (see /work/shared/WORLD.md, the contract this module implements).

A scene is pure data: background colour, canvas aspect and 1-4 objects, each with shape,
colour, size (small/big), grid cell, jitter and rotation. `sample_scene(rng)` draws one; every
draw comes from the `random.Random` it is given, so a seed fixes the scene.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

SHAPES = ["circle", "square", "triangle", "star", "heart", "diamond", "cross", "hexagon"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "black"]
BACKGROUNDS = ["white", "gray", "black", "beige", "light blue"]
SIZES = ["small", "big"]
# 3x3 grid, row-major: index = row * 3 + col
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

COLOUR_RGB: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (255, 140, 0),
    "yellow": (245, 215, 20),
    "green": (30, 160, 60),
    "blue": (30, 70, 225),
    "purple": (135, 45, 185),
    "pink": (255, 120, 185),
    "brown": (125, 75, 30),
    "white": (255, 255, 255),
    "black": (15, 15, 15),
}
BACKGROUND_RGB: Dict[str, Tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "black": (8, 8, 8),
    "beige": (235, 220, 185),
    "light blue": (170, 205, 240),
}

# Object side as a fraction of the canvas' shorter edge. max(small) * 2 <= min(big), so a big
# object's bounding box is at least twice a small one's side (WORLD.md).
SMALL_SIDE = (0.13, 0.145)
BIG_SIDE = (0.29, 0.315)
MAX_ROTATION = 15.0  # degrees


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major
    side: float  # fraction of the shorter canvas edge
    dx: float  # jitter of the centre inside the cell, in [-1, 1] of the free room
    dy: float
    rotation: float  # degrees
    rgb: Tuple[int, int, int] = (0, 0, 0)

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def name(self) -> str:
        """`big red circle`"""
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def ref(self) -> str:
        """`red circle` -- unique in a scene, since no two objects share colour and shape."""
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    background: str
    objects: List[SceneObject]
    aspect: float = 1.0  # width / height
    bg_rgb: Tuple[int, int, int] = (0, 0, 0)
    noise: float = 0.0  # std of pixel noise on the background
    gradient: float = 0.0  # strength of a light linear shading of the background
    seed: int = 0

    def ordered(self) -> List[SceneObject]:
        """Objects in reading order (top left to bottom right)."""
        return sorted(self.objects, key=lambda o: o.cell)

    def by_cell(self) -> Dict[int, SceneObject]:
        """The object in each occupied grid cell (one per cell)."""
        return {o.cell: o for o in self.objects}

    def find(self, colour: Optional[str] = None, shape: Optional[str] = None,
             size: Optional[str] = None) -> List[SceneObject]:
        return [o for o in self.ordered()
                if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
                and (size is None or o.size == size)]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        d = dict(d)
        objs = [SceneObject(**{**o, "rgb": tuple(o["rgb"])}) for o in d.pop("objects")]
        return Scene(objects=objs, **{**d, "bg_rgb": tuple(d["bg_rgb"])})


def _jitter_rgb(rng: random.Random, rgb, amount: int) -> Tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore


def sample_scene(rng: random.Random, *, n_objects: Optional[int] = None, aspect: Optional[float] = None,
                 seed: int = 0) -> Scene:
    background = rng.choice(BACKGROUNDS)
    n = n_objects if n_objects is not None else rng.randint(1, 4)
    cells = rng.sample(range(9), n)
    used = set()
    objects = []
    colours = [c for c in COLOURS if c != background]
    for cell in cells:
        while True:
            shape, colour = rng.choice(SHAPES), rng.choice(colours)
            if (shape, colour) not in used:
                used.add((shape, colour))
                break
        size = rng.choice(SIZES)
        lo, hi = SMALL_SIDE if size == "small" else BIG_SIDE
        objects.append(SceneObject(
            shape=shape, colour=colour, size=size, cell=cell, side=rng.uniform(lo, hi),
            dx=rng.uniform(-1, 1), dy=rng.uniform(-1, 1),
            rotation=rng.uniform(-MAX_ROTATION, MAX_ROTATION),
            rgb=_jitter_rgb(rng, COLOUR_RGB[colour], 14),
        ))
    if aspect is None:
        aspect = 1.0 if rng.random() < 0.6 else rng.choice([rng.uniform(0.6, 0.95), rng.uniform(1.05, 1.7)])
    return Scene(background=background, objects=objects, aspect=aspect,
                 bg_rgb=_jitter_rgb(rng, BACKGROUND_RGB[background], 8),
                 noise=rng.choice([0.0, 0.0, rng.uniform(1, 8)]),
                 gradient=rng.choice([0.0, 0.0, rng.uniform(0.02, 0.08)]), seed=seed)


def object_box(scene: Scene, obj: SceneObject, width: int, height: int) -> Tuple[float, float, float]:
    """Centre x, centre y and side in pixels for a canvas of width x height."""
    side = obj.side * min(width, height)
    cw, ch = width / 3.0, height / 3.0
    room_x = max(0.0, (cw - side) / 2.0) * 0.85
    room_y = max(0.0, (ch - side) / 2.0) * 0.85
    cx = (obj.col + 0.5) * cw + obj.dx * room_x
    cy = (obj.row + 0.5) * ch + obj.dy * room_y
    return cx, cy, side


# Seed ranges: disjoint, so training never sees a validation or test scene.
SPLIT_SEED_BASE = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}


def scene_for(split: str, index: int) -> Scene:
    seed = SPLIT_SEED_BASE[split] + index
    return sample_scene(random.Random(seed), seed=seed)
