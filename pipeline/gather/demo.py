"""The demo world: VQA items, a bootstrap split and two search corpora, built only from packaged data.

Reads (see `demo_data`): flagpy flags, countryinfo facts, the offline Wikipedia summaries, easy-vqa and the
scikit-image photos. `read_demo` yields raw rows (images as lazy recipes rendered inside dask workers) of these kinds:
  flag_country     which country's flag is in the (re-photographed) image            needs recognition
  flag_capital / flag_currency / flag_region / flag_population / flag_neighbours   recognition + knowledge
  famous_capital   the flag is named in the question; a knowledgeable model answers without search
  visual           easy-vqa shape/colour questions: answerable from the pixels alone
  photo_fact       real photos (astronaut, rocket, Hubble field, ...) with a fact about what they show
Countries are split, seeded, into a bootstrap pool and a probe pool; bootstrap rows (split "bootstrap") use only
bootstrap countries and easy-vqa images no other row uses, so no bootstrap entity appears in any other item.
`write_corpora` writes data/corpora/passages.parquet (Wikipedia summaries + one fact passage per country) and
data/corpora/images.parquet (clean flags and photos). `build_demo_world` does all of it in one call.
Query images are seeded re-photographs (`rephoto`), so they are never byte-identical to corpus images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import urllib.parse
from pathlib import Path
from typing import Iterator

import datasets

from pipeline.config import param
from pipeline.images import ImageParams, normalize_image
from pipeline.schema import sha1_hex, write_table
from pipeline.gather import demo_data
from pipeline.gather.base import FileImage, raw_row
from pipeline.gather.rephoto import JitterParams, rephotograph

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

FLAG_LICENSE = "MIT (flagpy flag, countryinfo facts)"
EASY_VQA_LICENSE = "MIT (easy-vqa)"
WIKI_LICENSE = "CC-BY-SA-4.0 (Wikipedia)"
FACTS_LICENSE = "MIT (countryinfo)"

CURRENCY_NAMES = {
    "EUR": "euro", "USD": "United States dollar", "GBP": "pound sterling", "JPY": "Japanese yen", "CNY": "renminbi",
    "INR": "Indian rupee", "RUB": "Russian ruble", "BRL": "Brazilian real", "CAD": "Canadian dollar",
    "AUD": "Australian dollar", "CHF": "Swiss franc", "MXN": "Mexican peso", "KRW": "South Korean won",
    "ZAR": "South African rand", "TRY": "Turkish lira", "SEK": "Swedish krona", "NOK": "Norwegian krone",
    "DKK": "Danish krone", "PLN": "Polish zloty", "NZD": "New Zealand dollar", "XOF": "West African CFA franc",
    "XAF": "Central African CFA franc", "XCD": "East Caribbean dollar", "EGP": "Egyptian pound",
    "NGN": "Nigerian naira", "IDR": "Indonesian rupiah", "THB": "Thai baht", "ARS": "Argentine peso",
    "SAR": "Saudi riyal", "PKR": "Pakistani rupee", "BDT": "Bangladeshi taka", "VND": "Vietnamese dong",
    "PHP": "Philippine peso", "ILS": "Israeli new shekel", "UAH": "Ukrainian hryvnia", "KES": "Kenyan shilling",
    "MAD": "Moroccan dirham", "CZK": "Czech koruna", "HUF": "Hungarian forint", "CLP": "Chilean peso",
    "COP": "Colombian peso", "PEN": "Peruvian sol", "MYR": "Malaysian ringgit", "SGD": "Singapore dollar",
}
POPULATION_BANDS = ((1_000_000, "under 1 million"), (10_000_000, "1 to 10 million"),
                    (100_000_000, "10 to 100 million"), (None, "over 100 million"))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen")
COUNTRY_KINDS = ("flag_country", "flag_capital", "flag_currency", "flag_region", "flag_population", "flag_neighbours")


@dataclasses.dataclass
class DemoParams:
    seed: int = param(0, help="seed of every random choice in the demo world (pools, sampling, photo jitter)")
    flag_country: int = param(100, help="probe items: which country's flag is this")
    flag_capital: int = param(70, help="probe items: capital of the country whose flag is shown")
    flag_currency: int = param(40, help="probe items: ISO currency code of the country whose flag is shown")
    flag_region: int = param(40, help="probe items: world region of the country whose flag is shown")
    flag_population: int = param(40, help="probe items: population band of the country whose flag is shown")
    flag_neighbours: int = param(40, help="probe items: number of countries with a land border to the flag's country")
    famous_capital: int = param(30, help="probe items: capital of a populous country named in the question (search-free)")
    visual: int = param(50, help="probe items: purely visual easy-vqa questions")
    photo_fact: int = param(9, help="probe items: facts about real scikit-image photos (at most 9)")
    bootstrap_countries: int = param(20, help="countries reserved for the bootstrap split (all country kinds each)")
    bootstrap_visual: int = param(30, help="bootstrap items: easy-vqa questions on images no probe item uses")
    wiki_passages: int = param(0, help="Wikipedia summaries in the passage corpus (0 = all ~10k; countries always kept)")
    jitter: JitterParams = param(factory=JitterParams, help="how query photos are distorted")

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and f.name != "seed" and v < 0:
                raise ValueError(f"{f.name} must be >= 0, got {v}")

    def small(self) -> "DemoParams":
        """A tiny world for tests: a handful of items per kind."""
        return dataclasses.replace(self, flag_country=6, flag_capital=4, flag_currency=3, flag_region=3,
                                   flag_population=3, flag_neighbours=3, famous_capital=3, visual=5, photo_fact=3,
                                   bootstrap_countries=3, bootstrap_visual=4, wiki_passages=50)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


@dataclasses.dataclass(frozen=True)
class FlagPhoto:
    """Lazy image: a seeded re-photograph of a flag, rendered when the row is processed."""

    flag_file: str
    seed: int
    jitter: JitterParams

    def load(self) -> bytes:
        from PIL import Image

        return rephotograph(Image.fromarray(demo_data.load_flag(self.flag_file)), self.seed, self.jitter)


@dataclasses.dataclass(frozen=True)
class PhotoOfPhoto:
    """Lazy image: a seeded re-photograph of a scikit-image photo (no background margin, wider)."""

    file_name: str
    seed: int
    jitter: JitterParams

    def load(self) -> bytes:
        from PIL import Image

        img = Image.open(demo_data.skimage_photo_path(self.file_name))
        p = dataclasses.replace(self.jitter, width=max(self.jitter.width, 384), margin=0.02)
        return rephotograph(img, self.seed, p)


def wiki_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + urllib.parse.quote(title.replace(" ", "_"), safe="_(),'-.")


def population_band(pop: int) -> str:
    for limit, label in POPULATION_BANDS:
        if limit is None or pop < limit:
            return label
    raise AssertionError


def _region_aliases(c: demo_data.Country) -> list[str]:
    if c.region == "Americas":
        south = c.subregion == "South America"
        return ["America", "the Americas", "South America" if south else "North America"]
    return [c.subregion] if c.subregion else []


def country_fact(kind: str, c: demo_data.Country) -> tuple[str, str, list[str]] | None:
    """(question, answer, aliases) of one country kind, or None when the packaged facts lack it."""
    shown = "the country whose flag is shown"
    if kind == "flag_country":
        return "Which country's flag is shown in this image?", c.name, list(c.aliases)
    if kind == "flag_capital" and c.capital:
        return f"What is the capital city of {shown}?", c.capital, []
    if kind == "flag_currency" and c.currencies:
        code = c.currencies[0]
        return (f"What is the ISO 4217 code of the currency of {shown}?", code,
                [CURRENCY_NAMES[code]] if code in CURRENCY_NAMES else [])
    if kind == "flag_region" and c.region:
        return (f"In which world region (Africa, Americas, Asia, Europe or Oceania) is {shown}?", c.region,
                _region_aliases(c))
    if kind == "flag_population" and c.population:
        bands = ", ".join(label for _, label in POPULATION_BANDS)
        return (f"Roughly how many people live in {shown}? Answer with one of: {bands}.",
                population_band(c.population), [])
    if kind == "flag_neighbours":
        n = len(c.borders)
        aliases = [NUMBER_WORDS[n]] if n < len(NUMBER_WORDS) else []
        return (f"How many countries share a land border with {shown}?", str(n), aliases + (["none"] if n == 0 else []))
    return None


def split_countries(params: DemoParams) -> tuple[list[demo_data.Country], list[demo_data.Country], list[demo_data.Country]]:
    """(famous, probe pool, bootstrap pool): famous = most populous; bootstrap drawn (seeded) from the rest."""
    cs = list(demo_data.countries())
    by_pop = sorted(cs, key=lambda c: (-c.population, c.name))
    famous = by_pop[: params.famous_capital]
    famous_names = {c.name for c in famous}
    rest = [c for c in cs if c.name not in famous_names]
    rng = random.Random(_seed(params.seed, "bootstrap-countries"))
    boot = sorted(rng.sample(rest, min(params.bootstrap_countries, len(rest))), key=lambda c: c.name)
    boot_names = {c.name for c in boot}
    probe = [c for c in cs if c.name not in boot_names]
    return famous, probe, boot


def _country_rows(kind: str, countries: list[demo_data.Country], count: int | None, params: DemoParams,
                  split: str) -> Iterator[dict]:
    eligible = [(c, f) for c in countries if (f := country_fact(kind, c)) is not None]
    if count is not None:
        rng = random.Random(_seed(params.seed, split, kind))
        eligible = sorted(rng.sample(eligible, min(count, len(eligible))), key=lambda cf: cf[0].name)
    for c, (question, answer, aliases) in eligible:
        key = f"{split}/{kind}/{c.name}"
        yield raw_row(
            key, id=key, image=FlagPhoto(c.flag_file, _seed(params.seed, key), params.jitter),
            question=question, answer=answer, aliases=aliases, category=kind, license=FLAG_LICENSE, entity=c.name,
            meta={"kind": kind, "wiki_url": wiki_url(c.wiki_title or c.name)}, split=split,
        )


def _famous_rows(famous: list[demo_data.Country], params: DemoParams) -> Iterator[dict]:
    for c in famous:
        if not c.capital:
            continue
        key = f"items/famous_capital/{c.name}"
        yield raw_row(
            key, id=key, image=FlagPhoto(c.flag_file, _seed(params.seed, key), params.jitter),
            question=f"This is the flag of {c.name}. What is the capital city of {c.name}?", answer=c.capital,
            category="famous_capital", license=FLAG_LICENSE, entity=c.name,
            meta={"kind": "famous_capital", "wiki_url": wiki_url(c.wiki_title or c.name)},
        )


def _visual_rows(params: DemoParams) -> Iterator[dict]:
    images = demo_data.easy_vqa("train")
    rng = random.Random(_seed(params.seed, "easy-vqa"))
    picked = rng.sample(range(len(images)), min(len(images), params.visual + params.bootstrap_visual))
    for n, idx in enumerate(picked):
        split = "items" if n < params.visual else "bootstrap"
        path, qas = images[idx]
        question, answer = qas[_seed(params.seed, "easy-vqa-q", idx) % len(qas)]
        image_id = Path(path).stem
        key = f"{split}/visual/easy-vqa-{image_id}"
        yield raw_row(
            key, id=key, image=FileImage(path), question=question, answer=answer, category="visual",
            license=EASY_VQA_LICENSE, entity=f"easy-vqa:train/{image_id}",
            meta={"kind": "visual", "easy_vqa_image": int(image_id)}, split=split,
        )


def _photo_rows(params: DemoParams) -> Iterator[dict]:
    for file_name, question, answer, aliases, entity, title, license_ in demo_data.PHOTO_FACTS[: params.photo_fact]:
        key = f"items/photo_fact/{file_name}/{question}"
        yield raw_row(
            key, id=key, image=PhotoOfPhoto(file_name, _seed(params.seed, key), params.jitter), question=question,
            answer=answer, aliases=list(aliases), category="photo_fact", license=license_, entity=entity,
            meta={"kind": "photo_fact", "wiki_url": wiki_url(title), "skimage_file": file_name},
        )


def read_demo(params: DemoParams) -> Iterator[dict]:
    """All raw rows of the demo world, probe items first, then the bootstrap split; deterministic order."""
    famous, probe, boot = split_countries(params)
    for kind in COUNTRY_KINDS:
        yield from _country_rows(kind, probe, getattr(params, kind), params, "items")
    yield from _famous_rows(famous, params)
    yield from _photo_rows(params)
    visual = list(_visual_rows(params))
    yield from (r for r in visual if r["split"] == "items")
    for kind in COUNTRY_KINDS:
        yield from _country_rows(kind, boot, None, params, "bootstrap")
    yield from (r for r in visual if r["split"] == "bootstrap")


# ---------------------------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------------------------
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


def passage_rows(params: DemoParams) -> list[dict]:
    wiki = demo_data.wiki_summaries()
    cs = demo_data.countries()
    keep = ({c.wiki_title for c in cs if c.wiki_title} | {c.capital for c in cs}
            | {t for *_, t, _ in demo_data.PHOTO_FACTS} | {f[2] for f in demo_data.PHOTO_FACTS})
    titles = sorted(wiki)
    if params.wiki_passages:
        rng = random.Random(_seed(params.seed, "wiki-passages"))
        others = [t for t in titles if t not in keep]
        keep = (keep & set(titles)) | set(rng.sample(others, min(len(others), params.wiki_passages)))
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


def write_corpora(corpora_dir: str | os.PathLike, params: DemoParams, opts: ImageParams) -> dict:
    """Write passages.parquet and images.parquet under `corpora_dir`; returns their row counts."""
    out = Path(corpora_dir)
    passages = passage_rows(params)
    images = image_rows(opts)
    write_table(datasets.Dataset.from_list(passages, features=PASSAGE_FEATURES).data.table, out / "passages.parquet")
    write_table(datasets.Dataset.from_list(images, features=CORPUS_IMAGE_FEATURES).data.table, out / "images.parquet")
    return {"passages": len(passages), "corpus_images": len(images)}


def build_demo_world(
    data_dir: str | os.PathLike = "data", params: DemoParams | None = None, image: ImageParams | None = None, *,
    scheduler: str = "threads", num_workers: int = 2, partition_size: int = 64,
) -> dict:
    """Gather the demo world into <data_dir>/gather/demo/ and write the corpora to <data_dir>/corpora/.

    Writes items.parquet, bootstrap.parquet, quarantine.parquet, metrics.json (returned, with corpus counts).
    """
    from pipeline.io import write_json
    from pipeline.gather.collect import gather_rows, write_outputs

    params = params or DemoParams()
    image = image or ImageParams()
    data_dir = Path(data_dir)
    result = gather_rows(read_demo(params), "demo", image, scheduler=scheduler, num_workers=num_workers,
                         partition_size=partition_size)
    result.splits.setdefault("bootstrap", [])
    metrics = write_outputs(result, data_dir / "gather" / "demo")
    metrics.update(write_corpora(data_dir / "corpora", params, image))
    write_json(metrics, data_dir / "gather" / "demo" / "metrics.json")
    return metrics
