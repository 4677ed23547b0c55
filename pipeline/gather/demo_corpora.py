"""The demo world's two search corpora, from packaged data only (see pipeline/gather/demo.py for the items).

`write_corpora(corpora_dir, params, opts)` writes passages.parquet (Wikipedia lead summaries, CC BY-SA 4.0, plus one
fact passage per country phrased so "capital of X" style queries reach it) and images.parquet (every clean flag, the
bootstrap countries' too, and each distinct scikit-image photo, PNG). Reads packaged data; writes only `corpora_dir`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import random
from pathlib import Path

import datasets

from pipeline.gather import demo_data
from pipeline.gather.demo_data import CURRENCY_NAMES, population_band, seed_of, wiki_url
from pipeline.images import ImageParams, normalize_image
from pipeline.schema import sha1_hex, write_table

WIKI_LICENSE = "CC-BY-SA-4.0 (Wikipedia)"
FACTS_LICENSE = "MIT (countryinfo)"
PASSAGE_FEATURES = datasets.Features({
    "passage_id": datasets.Value("string"),
    "title": datasets.Value("string"),
    "text": datasets.Value("string"),
    "url": datasets.Value("string"),
    "entity": datasets.Value("string"),
    "license": datasets.Value("string"),
})
CORPUS_IMAGE_FEATURES = datasets.Features({
    "image_id": datasets.Value("string"),
    "title": datasets.Value("string"),
    "url": datasets.Value("string"),
    "entity": datasets.Value("string"),
    "license": datasets.Value("string"),
    "image": datasets.Image(),
})


def fact_passage(c: demo_data.Country) -> str:
    """A short factual paragraph about a country, phrased so "capital of X" style queries match it."""
    parts = [f"{c.name} is a country in {c.subregion or c.region}" + (f" ({c.region})." if c.subregion else ".")]
    if c.capital:
        parts.append(f"The capital of {c.name} is {c.capital}.")
    if c.currencies:
        names = [f"{CURRENCY_NAMES[x]} ({x})" if x in CURRENCY_NAMES else x for x in c.currencies[:1]]
        parts.append(f"The currency of {c.name} is the {names[0]}; ISO 4217 code {c.currencies[0]}.")
    if c.population:
        parts.append(f"The population of {c.name} is about {c.population:,} ({population_band(c.population)}).")
    if c.borders:
        parts.append(f"{c.name} shares land borders with {len(c.borders)} countries: {', '.join(c.borders)}.")
    else:
        parts.append(f"{c.name} has no land borders with other countries.")
    if c.aliases:
        parts.append("Also known as: " + ", ".join(a for a in c.aliases if len(a) > 3) + ".")
    return " ".join(parts)


def passage_rows(seed: int = 0, wiki_passages: int = 0) -> list[dict]:
    """Wikipedia summaries (all, or `wiki_passages` of them, seeded, countries and photo topics always kept) and one
    fact passage per country."""
    wiki = demo_data.wiki_summaries()
    cs = demo_data.countries()
    keep = ({c.wiki_title for c in cs if c.wiki_title} | {c.capital for c in cs}
            | {t for *_, t, _ in demo_data.PHOTO_FACTS} | {f[2] for f in demo_data.PHOTO_FACTS})
    titles = sorted(wiki)
    if wiki_passages:
        rng = random.Random(seed_of(seed, "wiki-passages"))
        others = [t for t in titles if t not in keep]
        keep = (keep & set(titles)) | set(rng.sample(others, min(len(others), wiki_passages)))
        titles = [t for t in titles if t in keep]
    rows = []
    for t in titles:
        rec = wiki[t]
        text = (rec.get("extract") or "").strip()
        if not text:
            continue
        rows.append({"passage_id": "wiki-" + sha1_hex(t)[:16], "title": t, "text": text, "url": wiki_url(t),
                     "entity": t, "license": WIKI_LICENSE})
    for c in cs:
        rows.append({"passage_id": "facts-" + sha1_hex(c.name)[:16], "title": c.name, "text": fact_passage(c),
                     "url": wiki_url(c.wiki_title or c.name), "entity": c.name, "license": FACTS_LICENSE})
    return rows


def image_rows(opts: ImageParams) -> list[dict]:
    """Clean corpus images (always PNG, lossless): every flag (bootstrap ones too, so search works for them) and
    each distinct photo."""
    from PIL import Image

    opts = dataclasses.replace(opts, format="png")
    rows = []
    for c in demo_data.countries():
        buf = io.BytesIO()
        Image.fromarray(demo_data.load_flag(c.flag_file)).save(buf, format="PNG")
        norm = normalize_image(buf.getvalue(), opts)
        title = f"Flag of {c.name}"
        rows.append({"image_id": "flag-" + sha1_hex(c.name)[:16], "title": title,
                     "url": wiki_url(f"Flag of {c.wiki_title or c.name}"), "entity": c.name,
                     "license": "MIT (flagpy)", "image": {"bytes": norm.bytes, "path": None}})
    seen = set()
    for file_name, _, _, _, entity, title, license_ in demo_data.PHOTO_FACTS:
        if file_name in seen:
            continue
        seen.add(file_name)
        norm = normalize_image(demo_data.skimage_photo_path(file_name).read_bytes(), opts)
        rows.append({"image_id": "photo-" + sha1_hex(file_name)[:16], "title": title, "url": wiki_url(title),
                     "entity": entity, "license": license_, "image": {"bytes": norm.bytes, "path": None}})
    return rows


def write_corpora(corpora_dir: str | os.PathLike, seed: int, wiki_passages: int, opts: ImageParams) -> dict:
    """Write passages.parquet and images.parquet under `corpora_dir`; returns their row counts."""
    out = Path(corpora_dir)
    passages = passage_rows(seed, wiki_passages)
    images = image_rows(opts)
    write_table(datasets.Dataset.from_list(passages, features=PASSAGE_FEATURES).data.table, out / "passages.parquet")
    write_table(datasets.Dataset.from_list(images, features=CORPUS_IMAGE_FEATURES).data.table, out / "images.parquet")
    return {"passages": len(passages), "corpus_images": len(images)}
