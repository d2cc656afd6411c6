"""Renderers of the shapes world: PIL (supersampled, anti-aliased) and an SVG text writer.

Both draw the same geometry (`shape_outline`), so an SVG rasterised by sharp/librsvg and a PIL
render of the same scene show the same picture. `augment` turns a render into the kinds of file
users post (non-square, any size, JPEG, alpha, blur) and decodes it back to RGB.
"""

from __future__ import annotations

import io
import math
import random
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .scene import Scene, SceneObject, object_box

Point = Tuple[float, float]


def _heart(n: int = 40) -> List[Point]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x, y))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    s = max(max(xs) - min(xs), max(ys) - min(ys))
    return [((x - cx) / s, (y - cy) / s) for x, y in pts]


def _regular(n: int, r: float, start: float) -> List[Point]:
    return [(r * math.cos(start + 2 * math.pi * i / n), r * math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def _star() -> List[Point]:
    pts = []
    for i in range(10):
        r = 0.5 if i % 2 == 0 else 0.2
        a = -math.pi / 2 + math.pi * i / 5
        pts.append((r * math.cos(a), r * math.sin(a) + 0.04))
    return pts


_A = 0.17  # half arm width of the cross
# Unit outlines, centred at 0, spanning at most [-0.5, 0.5]; y grows downwards (image coordinates).
OUTLINES = {
    "square": [(-0.43, -0.43), (0.43, -0.43), (0.43, 0.43), (-0.43, 0.43)],
    "triangle": [(0.0, -0.5), (0.5, 0.42), (-0.5, 0.42)],
    "star": _star(),
    "heart": _heart(),
    "diamond": [(0.0, -0.5), (0.36, 0.0), (0.0, 0.5), (-0.36, 0.0)],
    "cross": [(-_A, -0.5), (_A, -0.5), (_A, -_A), (0.5, -_A), (0.5, _A), (_A, _A), (_A, 0.5), (-_A, 0.5),
              (-_A, _A), (-0.5, _A), (-0.5, -_A), (-_A, -_A)],
    "hexagon": _regular(6, 0.5, 0.0),
}


def shape_outline(obj: SceneObject, cx: float, cy: float, side: float) -> List[Point]:
    """The polygon of a non-circle object in pixels (rotation applied)."""
    a = math.radians(obj.rotation)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + side * (x * ca - y * sa), cy + side * (x * sa + y * ca)) for x, y in OUTLINES[obj.shape]]


def canvas_size(scene: Scene, long_edge: int) -> Tuple[int, int]:
    if scene.aspect >= 1:
        return long_edge, max(1, round(long_edge / scene.aspect))
    return max(1, round(long_edge * scene.aspect)), long_edge


def _background(scene: Scene, w: int, h: int, rng: random.Random) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    img[:] = scene.bg_rgb
    if scene.gradient:
        ramp = np.linspace(-1, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = ramp[None, :, None] if ramp.shape[0] == w else ramp[:, None, None]
        img = img * (1 + scene.gradient * ramp) + 255 * scene.gradient * 0.3 * ramp
    if scene.noise:
        nrng = np.random.default_rng(rng.randrange(2 ** 32))
        img = img + nrng.normal(0, scene.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def render_pil(scene: Scene, long_edge: int = 224, supersample: int = 4, rng: Optional[random.Random] = None
               ) -> Image.Image:
    """RGB render with anti-aliased edges (drawn at `supersample`x and reduced)."""
    rng = rng or random.Random(scene.seed)
    w, h = canvas_size(scene, long_edge)
    ss = max(1, supersample)
    img = _background(scene, w, h, rng)
    for obj in scene.ordered():
        cx, cy, side = object_box(scene, obj, w, h)
        # each mask is drawn only over the object's own box (whole output pixels), which keeps
        # large canvases cheap; the polygon is shifted by a whole number of output pixels
        half = side * 0.75 + 2
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(w, int(math.ceil(cx + half))), min(h, int(math.ceil(cy + half)))
        if x1 <= x0 or y1 <= y0:
            continue
        m = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
        d = ImageDraw.Draw(m)
        lx, ly = (cx - x0) * ss, (cy - y0) * ss
        if obj.shape == "circle":
            r = side * ss / 2
            d.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
        else:
            d.polygon(shape_outline(obj, lx, ly, side * ss), fill=255)
        if ss > 1:
            m = m.resize((x1 - x0, y1 - y0), Image.BOX)
        a = np.asarray(m, np.float32)[..., None] / 255.0
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - a) + np.asarray(obj.rgb, np.float32) * a
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_svg(scene: Scene, long_edge: int = 224) -> str:
    """The scene as an SVG document (flat background; no noise), for sharp/librsvg and the TS tests."""
    w, h = canvas_size(scene, long_edge)
    rgb = lambda c: "#%02x%02x%02x" % tuple(c)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<rect x="0" y="0" width="{w}" height="{h}" fill="{rgb(scene.bg_rgb)}"/>']
    for obj in scene.ordered():
        cx, cy, side = object_box(scene, obj, w, h)
        if obj.shape == "circle":
            parts.append(f'<circle cx="{cx:.2f}" cy="{cy:.2f}" r="{side / 2:.2f}" fill="{rgb(obj.rgb)}"/>')
        else:
            pts = " ".join(f"{x:.2f},{y:.2f}" for x, y in shape_outline(obj, cx, cy, side))
            parts.append(f'<polygon points="{pts}" fill="{rgb(obj.rgb)}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def augment(img: Image.Image, rng: random.Random, *, strength: float = 1.0) -> Image.Image:
    """Slight blur, JPEG round trip, PNG-with-alpha round trip; returns RGB."""
    if rng.random() < 0.25 * strength:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    r = rng.random()
    if r < 0.3 * strength:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(25, 95))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    elif r < 0.4 * strength:
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        buf = io.BytesIO()
        rgba.save(buf, "PNG")
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def random_long_edge(rng: random.Random) -> int:
    """Image sizes users post, from 64 to 2048 px (mostly small: they are reduced to 112 anyway)."""
    r = rng.random()
    if r < 0.15:
        return rng.randint(64, 111)
    if r < 0.8:
        return rng.randint(112, 320)
    if r < 0.98:
        return rng.randint(320, 800)
    return rng.randint(800, 2048)


def render_augmented(scene: Scene, rng: random.Random, strength: float = 1.0) -> Image.Image:
    long_edge = random_long_edge(rng) if strength > 0 else 224
    ss = 4 if long_edge < 160 else (2 if long_edge < 600 else 1)
    if rng.random() < 0.15 * strength:
        ss = 1  # aliased edges, like a naive rasteriser
    img = render_pil(scene, long_edge, ss, rng)
    return augment(img, rng, strength=strength) if strength > 0 else img
