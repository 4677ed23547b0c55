"""The demo world: VQA items with an answer key, a bootstrap split and two search corpora, from packaged data only.

Every item carries its answer key in `meta.expected_need` (never shown to the model): what the demo labeler needs to
answer it, by construction of the world and the measured knowledge of the packaged SmolLM2 (a text-only model: it
never sees the image, so what the image shows reaches it only through image search):
  none    the question names the country and asks a fact the labeler knows      -> search_free
  image   the answer is the flag's country, or a fact it knows about that country -> image_search_required
  text    the question names the country and asks a fact it does not know       -> text_search_required
  mixed   a fact it does not know about the flag's country                       -> mixed_search_required
  visual  an easy-vqa shape question: only the pixels answer it                   -> unanswerable for a text-only
          labeler, search_free for one that sees the image
"Knows" is measured, not assumed: `knowledge/smollm2-135m.json` (written by bench/measure_knowledge.py) holds, per
country and fact, whether the base model answers right greedily and its pass rate over 8 samples at temperature 1.
A fact is known when the greedy answer is right, unknown when the greedy answer is wrong and no sample is right;
facts in between are not asked. The item kinds:
  named_capital / named_region    the country named, its capital / world region      none (known) or text (unknown)
  named_currency                  the country named, its ISO 4217 currency code        text
  flag_country                    which country's flag is shown                       image
  flag_capital / flag_region      capital / region of the country whose flag is shown image (known) or mixed
  flag_currency                   currency code of the country whose flag is shown      mixed
  visual                          easy-vqa shape/colour questions                      visual
  photo_fact                      facts about real scikit-image photos                 image or mixed
Countries are split, seeded and stratified by knowledge, into a bootstrap pool and a probe pool; bootstrap rows
(split "bootstrap") use only bootstrap countries and easy-vqa images no other row uses, so no bootstrap entity
appears in any probed item. The known slice (`known_facts`: every capital and region the labeler knows, each asked
in several phrasings) is written for the cold start to teach, so that what the key calls known is knowledge the
labeler keeps after its fine-tuning. `write_corpora` writes data/corpora/passages.parquet (Wikipedia summaries + one fact
passage per country) and data/corpora/images.parquet (clean flags and photos). `build_demo_world` does it all.
Query images are seeded re-photographs (`rephoto`), so they are never byte-identical to corpus images.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from pathlib import Path
from typing import Iterator, Mapping

from pipeline.config import param
from pipeline.images import ImageParams
from pipeline.gather import demo_data
from pipeline.gather.demo_data import CURRENCY_NAMES, seed_of, wiki_url
from pipeline.gather.base import FileImage, raw_row
from pipeline.gather.rephoto import JitterParams, rephotograph

FLAG_LICENSE = "MIT (flagpy flag, countryinfo facts)"
EASY_VQA_LICENSE = "MIT (easy-vqa)"

KNOWLEDGE_FILE = Path(__file__).resolve().parent / "knowledge" / "smollm2-135m.json"
NEEDS = ("none", "image", "text", "mixed", "visual")
NEED_LABEL = {"none": "search_free", "image": "image_search_required", "text": "text_search_required",
              "mixed": "mixed_search_required"}
REGIONS = "Africa, Americas, Asia, Europe or Oceania"

# kind -> (question, fact, the image identifies the country?, need when the fact is known, need when it is not)
# (None = such items are not made)
KINDS: dict[str, tuple[str, str, bool, str | None, str | None]] = {
    "named_capital": ("What is the capital city of {name}?", "capital", False, "none", "text"),
    "named_region": (f"In which world region ({REGIONS}) is {{name}}?", "region", False, "none", None),
    "named_currency": ("What is the ISO 4217 code of the currency of {name}?", "currency", False, None, "text"),
    "flag_country": ("Which country's flag is shown in this image?", "name", True, "image", "image"),
    "flag_capital": ("What is the capital city of the country whose flag is shown?", "capital", True, "image", "mixed"),
    "flag_region": (f"In which world region ({REGIONS}) is the country whose flag is shown?", "region", True, "image",
                    None),
    "flag_currency": ("What is the ISO 4217 code of the currency of the country whose flag is shown?", "currency",
                      True, None, "mixed"),
}
COUNTRY_KINDS = tuple(KINDS)


@dataclasses.dataclass
class DemoParams:
    seed: int = param(0, help="seed of every random choice in the demo world (pools, sampling, photo jitter)")
    named_capital_known: int = param(68, help="probe items: capital of a named country the labeler knows (need: none)")
    named_region_known: int = param(50, help="probe items: region of a named country the labeler knows (need: none)")
    named_capital_unknown: int = param(10, help="probe items: capital of a named country it does not know (need: text)")
    named_currency: int = param(90, help="probe items: currency code of a named country (need: text)")
    flag_country: int = param(50, help="probe items: which country's flag is shown (need: image)")
    flag_capital_known: int = param(40, help="probe items: known capital of the flag's country (need: image)")
    flag_region_known: int = param(20, help="probe items: known region of the flag's country (need: image)")
    flag_capital_unknown: int = param(40, help="probe items: unknown capital of the flag's country (need: mixed)")
    flag_currency: int = param(60, help="probe items: currency code of the flag's country (need: mixed)")
    visual: int = param(20, help="probe items: purely visual easy-vqa questions (need: visual)")
    photo_fact: int = param(0, help="probe items: facts about real scikit-image photos (at most 9)")
    bootstrap_countries: int = param(40, help="countries reserved for the bootstrap split, half known, half not "
                                     "(every kind each; their items teach the labeler the protocol)")
    bootstrap_visual: int = param(10, help="bootstrap items: easy-vqa questions on images no probe item uses")
    knowledge: str = param("", help="the labeler's measured knowledge (bench/measure_knowledge.py output); '' = the "
                           "packaged SmolLM2 table")
    wiki_passages: int = param(0, help="Wikipedia summaries in the passage corpus (0 = all ~10k; countries always kept)")
    jitter: JitterParams = param(factory=JitterParams, help="how query photos are distorted")

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and f.name != "seed" and v < 0:
                raise ValueError(f"{f.name} must be >= 0, got {v}")
        if self.knowledge and not Path(self.knowledge).is_file():
            raise ValueError(f"knowledge: {self.knowledge!r} is not a file; write one with bench/measure_knowledge.py "
                             "or leave it empty for the packaged table")

    def small(self) -> "DemoParams":
        """A tiny world for tests: a handful of items per kind."""
        return dataclasses.replace(
            self, named_capital_known=4, named_region_known=3, named_capital_unknown=4, named_currency=3,
            flag_country=4, flag_capital_known=3, flag_region_known=2, flag_capital_unknown=3, flag_currency=3,
            visual=3, photo_fact=2, bootstrap_countries=4, bootstrap_visual=2, wiki_passages=50)

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, need) -> how many probe items."""
        return {("named_capital", "none"): self.named_capital_known, ("named_region", "none"): self.named_region_known,
                ("named_capital", "text"): self.named_capital_unknown, ("named_currency", "text"): self.named_currency,
                ("flag_country", "image"): self.flag_country, ("flag_capital", "image"): self.flag_capital_known,
                ("flag_region", "image"): self.flag_region_known, ("flag_capital", "mixed"): self.flag_capital_unknown,
                ("flag_currency", "mixed"): self.flag_currency}


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


def _region_aliases(c: demo_data.Country) -> list[str]:
    if c.region == "Americas":
        south = c.subregion == "South America"
        return ["America", "the Americas", "South America" if south else "North America"]
    return [c.subregion] if c.subregion else []


@functools.lru_cache(maxsize=4)
def load_knowledge(path: str = "") -> dict[str, dict[str, dict]]:
    """fact -> country -> {"greedy": bool, "rate": float} (bench/measure_knowledge.py's table)."""
    file = Path(path) if path else KNOWLEDGE_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8"))["facts"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"knowledge table {file}: {exc}; write it with bench/measure_knowledge.py") from None


def knows(knowledge: Mapping[str, Mapping[str, Mapping]], fact: str, country: str) -> bool | None:
    """True when the labeler answers right greedily, False when it is never right, None in between or unmeasured.
    Nobody needs to know a country's name to be told it (fact "name")."""
    if fact == "name":
        return True
    m = knowledge.get(fact, {}).get(country)
    if m is None:
        return None
    if m["greedy"]:
        return True
    return False if m["rate"] == 0 else None


def country_fact(kind: str, c: demo_data.Country) -> tuple[str, str, list[str]] | None:
    """(question, answer, aliases) of one country kind, or None when the packaged facts lack it."""
    question, fact, _, _, _ = KINDS[kind]
    question = question.format(name=c.name)
    if fact == "name":
        return question, c.name, list(c.aliases)
    if fact == "capital" and c.capital:
        return question, c.capital, []
    if fact == "region" and c.region:
        return question, c.region, _region_aliases(c)
    if fact == "currency" and c.currencies:
        code = c.currencies[0]
        return question, code, [CURRENCY_NAMES[code]] if code in CURRENCY_NAMES else []
    return None


def expected_need(kind: str, c: demo_data.Country, knowledge: Mapping) -> str | None:
    """The answer key of a country item, or None when no such item is made (fact missing, knowledge in between)."""
    if country_fact(kind, c) is None:
        return None
    _, fact, _, if_known, if_unknown = KINDS[kind]
    known = knows(knowledge, fact, c.name)
    return if_known if known is True else if_unknown if known is False else None


def split_countries(params: DemoParams) -> tuple[list[demo_data.Country], list[demo_data.Country]]:
    """(probe pool, bootstrap pool): the bootstrap countries are drawn, seeded, half among those whose capital the
    labeler knows and half among those it does not, so the demonstrations show both behaviours."""
    knowledge = load_knowledge(params.knowledge)
    cs = list(demo_data.countries())
    rng = random.Random(seed_of(params.seed, "bootstrap-countries"))
    known = [c for c in cs if knows(knowledge, "capital", c.name) is True]
    unknown = [c for c in cs if knows(knowledge, "capital", c.name) is False]
    half = params.bootstrap_countries // 2
    boot = rng.sample(known, min(half, len(known))) + rng.sample(unknown, min(params.bootstrap_countries - half,
                                                                             len(unknown)))
    boot_names = {c.name for c in boot}
    return [c for c in cs if c.name not in boot_names], sorted(boot, key=lambda c: c.name)


def _country_row(kind: str, need: str, c: demo_data.Country, params: DemoParams, split: str) -> dict:
    question, answer, aliases = country_fact(kind, c)  # type: ignore[misc]
    key = f"{split}/{kind}/{c.name}"
    return raw_row(
        key, id=key, image=FlagPhoto(c.flag_file, seed_of(params.seed, key), params.jitter),
        question=question, answer=answer, aliases=aliases, category=kind, license=FLAG_LICENSE, entity=c.name,
        meta={"kind": kind, "expected_need": need, "wiki_url": wiki_url(c.wiki_title or c.name)}, split=split,
    )


def _probe_rows(countries: list[demo_data.Country], params: DemoParams) -> Iterator[dict]:
    knowledge = load_knowledge(params.knowledge)
    for (kind, need), count in params.counts().items():
        eligible = [c for c in countries if expected_need(kind, c, knowledge) == need]
        rng = random.Random(seed_of(params.seed, "items", kind, need))
        for c in sorted(rng.sample(eligible, min(count, len(eligible))), key=lambda c: c.name):
            yield _country_row(kind, need, c, params, "items")


def _bootstrap_rows(countries: list[demo_data.Country], params: DemoParams) -> Iterator[dict]:
    knowledge = load_knowledge(params.knowledge)
    for kind in KINDS:
        for c in countries:
            need = expected_need(kind, c, knowledge)
            if need is not None:
                yield _country_row(kind, need, c, params, "bootstrap")


def _visual_rows(params: DemoParams) -> Iterator[dict]:
    images = demo_data.easy_vqa("train")
    rng = random.Random(seed_of(params.seed, "easy-vqa"))
    picked = rng.sample(range(len(images)), min(len(images), params.visual + params.bootstrap_visual))
    for n, idx in enumerate(picked):
        split = "items" if n < params.visual else "bootstrap"
        path, qas = images[idx]
        question, answer = qas[seed_of(params.seed, "easy-vqa-q", idx) % len(qas)]
        image_id = Path(path).stem
        key = f"{split}/visual/easy-vqa-{image_id}"
        yield raw_row(
            key, id=key, image=FileImage(path), question=question, answer=answer, category="visual",
            license=EASY_VQA_LICENSE, entity=f"easy-vqa:train/{image_id}",
            meta={"kind": "visual", "expected_need": "visual", "easy_vqa_image": int(image_id)}, split=split,
        )


def _photo_rows(params: DemoParams) -> Iterator[dict]:
    for file_name, question, answer, aliases, entity, title, license_ in demo_data.PHOTO_FACTS[: params.photo_fact]:
        key = f"items/photo_fact/{file_name}/{question}"
        yield raw_row(
            key, id=key, image=PhotoOfPhoto(file_name, seed_of(params.seed, key), params.jitter), question=question,
            answer=answer, aliases=list(aliases), category="photo_fact", license=license_, entity=entity,
            meta={"kind": "photo_fact", "expected_need": "image" if answer in title or title in answer else "mixed",
                  "wiki_url": wiki_url(title), "skimage_file": file_name},
        )


# fact -> (questions, statement). Each known fact is asked in several phrasings, the probe's own among them: a 135M
# model taught "What do you know about the capital of Mexico?" alone answered "What is the capital city of Mexico?"
# with "not known to me" for 23 of 68 known capitals (knowledge is only extractable under varied phrasings).
FACT_STATEMENT = {
    "capital": (("What do you know about the capital of {name}?", "What is the capital city of {name}?",
                 "Which city is the capital of {name}?"), "The capital of {name} is {answer}."),
    "region": (("What do you know about where {name} is?", "In which world region is {name}?",
                "Where in the world is {name}?"), "{name} is in {answer}."),
}


def known_facts(params: DemoParams) -> list[dict]:
    """The known slice of the world, taught during the cold start: every (country, fact) the labeler answers right
    greedily (`knows` is True), capital and region, one row per phrasing of its question ({"entity", "fact",
    "phrasing", "question", "statement", "answer"}). By construction no text or mixed item asks one of these facts
    (those ask facts it does not know), so teaching them never teaches an answer that a search-required item needs."""
    knowledge = load_knowledge(params.knowledge)
    rows = []
    for c in demo_data.countries():
        for fact, (questions, statement) in FACT_STATEMENT.items():
            answer = {"capital": c.capital, "region": c.region}[fact]
            if answer and knows(knowledge, fact, c.name) is True:
                rows += [{"entity": c.name, "fact": fact, "phrasing": i, "question": q.format(name=c.name),
                          "statement": statement.format(name=c.name, answer=answer), "answer": answer}
                         for i, q in enumerate(questions)]
    return rows


def read_demo(params: DemoParams) -> Iterator[dict]:
    """All raw rows of the demo world, probe items first, then the bootstrap split; deterministic order."""
    probe, boot = split_countries(params)
    yield from _probe_rows(probe, params)
    yield from _photo_rows(params)
    visual = list(_visual_rows(params))
    yield from (r for r in visual if r["split"] == "items")
    yield from _bootstrap_rows(boot, params)
    yield from (r for r in visual if r["split"] == "bootstrap")


def build_demo_world(
    data_dir: str | os.PathLike = "data", params: DemoParams | None = None, image: ImageParams | None = None, *,
    scheduler: str = "threads", num_workers: int = 2, partition_size: int = 64,
) -> dict:
    """Gather the demo world into <data_dir>/gather/demo/ and write the corpora to <data_dir>/corpora/.

    Writes items.parquet, bootstrap.parquet, quarantine.parquet, facts.parquet (the known slice, `known_facts`),
    metrics.json (returned, with corpus counts).
    """
    import pandas as pd

    from pipeline.gather.collect import gather_rows, write_outputs
    from pipeline.gather.demo_corpora import write_corpora
    from pipeline.io import write_json

    params = params or DemoParams()
    image = image or ImageParams()
    data_dir = Path(data_dir)
    result = gather_rows(read_demo(params), "demo", image, scheduler=scheduler, num_workers=num_workers,
                         partition_size=partition_size)
    result.splits.setdefault("bootstrap", [])
    metrics = write_outputs(result, data_dir / "gather" / "demo")
    facts = known_facts(params)
    pd.DataFrame(facts, columns=["entity", "fact", "phrasing", "question", "statement", "answer"]).to_parquet(
        data_dir / "gather" / "demo" / "facts.parquet", index=False)
    metrics["known_facts"] = len({(f["entity"], f["fact"]) for f in facts})
    metrics["known_fact_questions"] = len(facts)
    metrics.update(write_corpora(data_dir / "corpora", params.seed, params.wiki_passages, image))
    write_json(metrics, data_dir / "gather" / "demo" / "metrics.json")
    return metrics
