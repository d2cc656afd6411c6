"""Image preprocessing of the reference code (training and the golden files use this one).

SQ-LLaVA stage 2 (`--image_aspect_ratio pad`, `train.py LazySupervisedDataset`):

    image = expand2square(image, tuple(int(x*255) for x in processor.image_mean))
    pixel_values = CLIPImageProcessor(image)  # shortest edge -> S (bicubic), centre crop S x S,
                                              # /255, (x - mean) / std, CHW

The pad colour truncates (`int`, not `round`): (122, 116, 104) for the CLIP mean.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from PIL import Image

RESAMPLE = {
    "bicubic": Image.BICUBIC,  # 3, CLIPImageProcessor's default
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
}


def pad_color(mean: Sequence[float]) -> Tuple[int, ...]:
    """The reference's background colour: `tuple(int(x*255) for x in image_mean)`."""
    return tuple(int(x * 255) for x in mean)


def expand2square(img: Image.Image, background: Tuple[int, ...]) -> Image.Image:
    """Pads to a square, the image centred (offset floor((long - short) / 2))."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def resize_shortest_edge(img: Image.Image, size: int, resample: str = "bicubic") -> Image.Image:
    """CLIPImageProcessor's resize: shortest edge to `size`, the other int(size * long / short)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), RESAMPLE[resample])


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """HWC centre crop (top = (h - size) // 2, left = (w - size) // 2)."""
    h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top:top + size, left:left + size]


def preprocess(pil_image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float],
               resample: str = "bicubic", pad: bool = True) -> np.ndarray:
    """A PIL image -> normalised float32 pixels [3, size, size] (add the batch axis yourself).

    pad: pad to a square with `pad_color(mean)` first (training's `image_aspect_ratio=pad`);
    without it a non-square image is resized on its shortest edge and centre-cropped.
    """
    img = pil_image.convert("RGB")
    if pad:
        img = expand2square(img, pad_color(mean))
    img = resize_shortest_edge(img, size, resample)
    arr = center_crop(np.asarray(img, dtype=np.float64), size) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
