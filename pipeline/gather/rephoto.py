"""Seeded "photo of a picture": what a phone photo does to a clean image, so query images never equal index images.

`rephotograph(img, seed, strength)` upscales, places the picture on a plain background, applies a small random
perspective warp, crops, jitters brightness / contrast / saturation, blurs slightly and re-encodes as JPEG at a
random quality. The result is perceptually close to the original (same entity at a glance) but never
byte-identical to it. Deterministic for a given (image, seed, strength). Reads and writes nothing.
"""
from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from pipeline.config import param


@dataclasses.dataclass
class JitterParams:
    width: int = param(256, help="width in pixels of the query photo (height keeps the aspect)")
    margin: float = param(0.03, help="largest background margin around the picture, as a fraction of its size")
    perspective: float = param(0.03, help="largest corner displacement of the perspective warp, fraction of the size")
    colour: float = param(0.15, help="largest relative change of brightness, contrast and saturation")
    jpeg_quality_min: int = param(60, help="lowest JPEG quality of the re-encode")
    jpeg_quality_max: int = param(85, help="highest JPEG quality of the re-encode")

    def validate(self) -> None:
        if not 1 <= self.jpeg_quality_min <= self.jpeg_quality_max <= 95:
            raise ValueError("need 1 <= jpeg_quality_min <= jpeg_quality_max <= 95")
        if self.width < 16:
            raise ValueError("width must be >= 16")


def _perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """Coefficients for PIL's PERSPECTIVE transform mapping output points `dst` to input points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64)).tolist()


def rephotograph(img: Image.Image, seed: int, p: JitterParams | None = None) -> bytes:
    """JPEG bytes of a jittered photo of `img` (RGB)."""
    p = p or JitterParams()
    rng = random.Random(seed)
    img = img.convert("RGB")
    w = p.width
    h = max(8, round(img.height * w / img.width))
    pic = img.resize((w, h), Image.Resampling.BICUBIC)
    # plain, slightly coloured background (a wall, a sky) with a random margin on each side
    bg = tuple(rng.randint(150, 235) for _ in range(3))
    ml, mr = (round(rng.uniform(0, p.margin) * w) for _ in range(2))
    mt, mb = (round(rng.uniform(0, p.margin) * h) for _ in range(2))
    canvas = Image.new("RGB", (w + ml + mr, h + mt + mb), bg)
    canvas.paste(pic, (ml, mt))
    cw, ch = canvas.size
    d = p.perspective
    corners = [(0, 0), (cw, 0), (cw, ch), (0, ch)]
    moved = [(x + rng.uniform(-d, d) * cw, y + rng.uniform(-d, d) * ch) for x, y in corners]
    canvas = canvas.transform(
        (cw, ch), Image.Transform.PERSPECTIVE, _perspective_coeffs(moved, corners),
        resample=Image.Resampling.BILINEAR, fillcolor=bg,
    )
    c = p.colour
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        canvas = enhancer(canvas).enhance(1.0 + rng.uniform(-c, c))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.8)))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=rng.randint(p.jpeg_quality_min, p.jpeg_quality_max), subsampling=2)
    return buf.getvalue()
