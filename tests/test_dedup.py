"""Dedup: exact Hamming search, planted near-duplicate images, duplicate rules, contamination, the stage."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipeline.dedup import clusters as dd
from pipeline.dedup.contamination import EvalSet, load_eval_set
from pipeline.dedup.hamming import brute_force_pairs, hamming_pairs
from pipeline.dedup.hashing import HashSpec, hash_files, hash_many
from pipeline.schema import make_item_id, sha1_hex, write_items

from shared_fixtures import MMSEARCH_R1_MINI, require_shared_fixture, shared_fixture

FIXTURE = shared_fixture(MMSEARCH_R1_MINI)
SPEC = HashSpec()


# ---------------------------------------------------------------------------------------------------------------
# helpers shared with test_balance.py
# ---------------------------------------------------------------------------------------------------------------
def synth(seed: int, size=(320, 240)) -> Image.Image:
    """A distinct picture: random filled shapes on a random background."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(x) for x in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        w, h = (int(v) for v in rng.integers(20, 160, 2))
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def reencoded(img):
    return encode(img, "JPEG", quality=55)


def resized(img):
    return encode(img.resize((img.width // 2, img.height // 2)))


def cropped(img, seed=0, most=0.05):
    """Trim a random fraction (up to `most`) from each side, then resize a little and save as JPEG."""
    rng = np.random.default_rng(seed)
    left, top, right, bottom = rng.uniform(0, most, 4)
    w, h = img.size
    c = img.crop((int(w * left), int(h * top), int(w * (1 - right)), int(h * (1 - bottom))))
    return encode(c.resize((c.width * 3 // 4, c.height * 3 // 4)), "JPEG", quality=80)


def make_item(source, question, answer, image: bytes | None, category="visual", entity="") -> dict:
    sha = sha1_hex(image) if image else ""
    return {
        "id": make_item_id(source, question, answer, sha),
        "image": {"bytes": image, "path": None} if image else None,
        "image_sha1": sha,
        "question": question,
        "answer": answer,
        "aliases": [],
        "source": source,
        "category": category,
        "license": "CC0-1.0",
        "entity": entity,
        "meta": "{}",
    }


def run_dedup(rows, evals=(), **kw):
    meta = pd.DataFrame(rows)
    hashes, errors = hash_many([r["image"]["bytes"] if r["image"] else None for r in rows], SPEC)
    eh, ee = [], []
    for e in evals:
        h, err = hash_many(e.images, SPEC)
        eh.append(h), ee.append(err)
    kw.setdefault("link_entity", False)
    return dd.dedup(meta, hashes, errors, evals=evals, eval_hashes=eh, eval_errors=ee, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Hamming search
# ---------------------------------------------------------------------------------------------------------------
def _planted(n, threshold, seed):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    src = rng.integers(0, n, n // 5)
    copies = h[src].copy()
    for j in range(len(copies)):
        for b in rng.choice(64, int(rng.integers(0, threshold + 2)), replace=False):
            copies[j] ^= np.uint64(1) << np.uint64(int(b))
    return np.concatenate([h, copies, h[:3]])  # + exact copies


@pytest.mark.parametrize("threshold", [0, 3, 8, 12])
def test_hamming_pairs_equal_brute_force(threshold):
    h = _planted(1500, threshold, seed=threshold)
    got = hamming_pairs(h, threshold=threshold)
    want = brute_force_pairs(h, threshold=threshold)
    assert len(want[0]) > 100  # the planted copies within the radius are there to be found
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    for blocks in (2, 5) if threshold <= 3 else (4, 7):  # any block count is exact, only speed differs
        for g, w in zip(hamming_pairs(h, threshold=threshold, blocks=blocks), want):
            np.testing.assert_array_equal(g, w)
    q = h[::7]
    for g, w in zip(hamming_pairs(q, h, threshold=threshold), brute_force_pairs(q, h, threshold=threshold)):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------------------------------------------
# planted copies
# ---------------------------------------------------------------------------------------------------------------
def test_planted_reencoded_resized_cropped_copies_are_caught_without_false_merges():
    originals = [synth(s) for s in range(40)]
    rows = [make_item("a", f"What is in picture {i}?", f"p{i}", encode(im)) for i, im in enumerate(originals)]
    kinds = {"reencoded": reencoded, "resized": resized}
    planted = []
    for i, im in enumerate(originals):
        for kind, fn in kinds.items():
            rows.append(make_item("b", f"{kind} question {i}?", f"{kind}{i}", fn(im)))
            planted.append((i, len(rows) - 1, kind))
        rows.append(make_item("b", f"cropped question {i}?", f"c{i}", cropped(im, seed=i)))
        planted.append((i, len(rows) - 1, "cropped"))
    res = run_dedup(rows)
    assert not res.excluded  # different questions: copies stay, clustered with their original
    cid = res.cluster_id
    missed = [(i, kind) for i, r, kind in planted if cid[r] != cid[i]]
    assert missed == []
    assert len({cid[i] for i in range(len(originals))}) == len(originals)  # no two originals merged
    assert res.metrics["clusters"] == len(originals)


def test_duplicate_rules_and_conflicts():
    a, b, c = synth(1), synth(2), synth(3)
    rows = [
        make_item("s", "What is this landmark?", "Tower", encode(a)),
        make_item("s", "what is THIS landmark", "tower", resized(a)),  # near-dup image, same normalised q+a
        make_item("s", "What is this landmark?", "Tower", encode(a), category="other"),  # exact copy (same id)
        make_item("s", "Who built this landmark?", "Eiffel", reencoded(a)),  # same image, other question: stays
        make_item("s", "What is this landmark?", "Bridge", cropped(a, 5)),  # same image+question, other answer
        make_item("s", "What colour is it?", "red", encode(b)),
        make_item("s", "Name the capital of Peru.", "Lima", None),
        make_item("s", "name the capital of peru", "Lima", None),  # text-only duplicate
        make_item("s", "What colour is it?", "blue", encode(c)),
    ]
    res = run_dedup(rows, template_min_count=3)
    ex = res.excluded
    assert sorted(ex) == [1, 2, 7]
    assert all(reason == "duplicate" for reason, _ in ex.values())
    assert rows[0]["id"] in ex[1][1] and rows[0]["id"] in ex[2][1] and rows[6]["id"] in ex[7][1]
    assert "exact copy" in ex[2][1] and "within" in ex[1][1]
    cid = res.cluster_id
    assert cid[0] == cid[3] == cid[4]  # one picture, several questions: one cluster
    assert cid[5] == cid[8]  # the same non-template question links two pictures
    assert res.report["conflicts"] and {rows[0]["id"], rows[4]["id"]} == set(res.report["conflicts"][0]["ids"])
    assert res.metrics["duplicates_exact"] == 1 and res.metrics["duplicates_near"] == 2


def test_question_links_unless_template():
    rows = [make_item("s", "Which river flows through this city?", f"r{i}", encode(synth(10 + i))) for i in range(2)]
    rows += [make_item("s", "Which country's flag is this?", f"f{i}", encode(synth(20 + i))) for i in range(6)]
    res = run_dedup(rows, template_min_count=5)
    cid = res.cluster_id
    assert cid[0] == cid[1]  # same specific question: one cluster
    assert len(set(cid[2:])) == 6  # the template question links nothing
    assert "which country s flag is this" in res.report["template_questions"]
    ents = run_dedup([make_item("s", f"q{i}?", "x", encode(synth(30 + i)), entity="Peru") for i in range(3)], link_entity=True)
    assert len(set(ents.cluster_id)) == 1


def test_unreadable_image_is_excluded_with_reason():
    rows = [make_item("s", "What is it?", "x", b"\x89PNG\r\n\x1a\n broken"), make_item("s", "Ok?", "y", encode(synth(1)))]
    res = run_dedup(rows)
    assert res.excluded[0][0] == "image_unreadable" and "could not be decoded" in res.excluded[0][1]
    assert res.cluster_id[1] and not res.cluster_id[0]


# ---------------------------------------------------------------------------------------------------------------
# contamination
# ---------------------------------------------------------------------------------------------------------------
def test_contamination_against_item_schema_and_mapped_benchmark(tmp_path):
    fixture = pq.read_table(require_shared_fixture(MMSEARCH_R1_MINI)).to_pylist()
    bench_img = fixture[0]["images"][0]["bytes"]
    bench_q = fixture[1]["prompt"][-1]["content"]  # "What is this building dedicated to?"
    ev_pics = [synth(100 + i) for i in range(3)]
    write_items([make_item("ev", f"eval q {i}?", "a", encode(im)) for i, im in enumerate(ev_pics)]
                + [make_item("ev", "In which year was the Zorblax treaty signed?", "1901", None)], tmp_path / "eval.parquet")
    rows = [make_item("p", f"clean {i}?", "x", encode(synth(i))) for i in range(5)]
    rows += [
        make_item("p", "pool q A?", "x", cropped(ev_pics[0], seed=3)),  # cropped copy of an eval image
        make_item("p", "pool q B?", "x", resized(Image.open(io.BytesIO(bench_img)).convert("RGB"))),  # benchmark image
        make_item("p", "In which year was the Zorblax treaty signed ", "1901", None),  # eval question
        make_item("p", bench_q, "x", encode(synth(50))),  # benchmark question with a new image
    ]
    evals = [
        load_eval_set(EvalSet(path=str(tmp_path / "eval.parquet"), name="mine")),
        load_eval_set(EvalSet(path=str(FIXTURE), name="mmsearch", columns={"question": "prompt", "image": "images"})),
    ]
    assert evals[1].questions[0] == "What is the country of origin of this food?"
    res = run_dedup(rows, evals=evals)
    assert sorted(res.excluded) == [5, 6, 7, 8]
    assert {r for r, _ in res.excluded.values()} == {"contaminated"}
    listed = {(c["id"], c["eval_set"], c["kind"]) for c in res.report["contamination"]["items"]}
    assert listed == {(rows[5]["id"], "mine", "image"), (rows[6]["id"], "mmsearch", "image"),
                      (rows[7]["id"], "mine", "question"), (rows[8]["id"], "mmsearch", "question")}
    assert res.report["contamination"]["by_eval_set"] == {"mine": 2, "mmsearch": 2}


def test_eval_set_with_a_missing_column_says_what_to_set():
    fixture = require_shared_fixture(MMSEARCH_R1_MINI)
    with pytest.raises(ValueError, match=r"columns.question"):
        load_eval_set(EvalSet(path=str(fixture), name="mm"))


# ---------------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------------
def _write_sources(root: Path):
    pics = [synth(s) for s in range(24)]
    a = [make_item("alpha", f"Question {i}?", f"a{i}", encode(p), category=f"cat{i % 2}") for i, p in enumerate(pics)]
    a.append(make_item("alpha", "Question 3?", "a3", resized(pics[3])))  # duplicate within alpha
    b = [make_item("beta", f"Question {i}?", f"a{i}", reencoded(p)) for i, p in enumerate(pics[:6])]  # dups across
    b += [make_item("beta", f"Other {i}?", "b", cropped(p, i)) for i, p in enumerate(pics[6:10])]  # cluster mates
    write_items(a, root / "data/gather/alpha/items.parquet")
    write_items(b, root / "data/gather/beta/items.parquet")
    write_items([make_item("alpha", "boot?", "x", encode(synth(99)))], root / "data/gather/alpha/bootstrap.parquet")
    return a, b


def _run_stage(root: Path, *overrides: str) -> dict:
    from pipeline.config import build
    from stages import dedup as stage

    values = {"sources": ["alpha", "beta"], "cache_dir": "data/cache/dedup", "chunk_rows": 8}
    for o in overrides:
        k, v = o.split("=", 1)
        values[k] = json.loads(v)
    stage.run(build(stage.Params, values), argparse.Namespace(root=str(root)))
    return json.loads((root / "data/dedup/metrics.json").read_text())


def test_stage_writes_outputs_counts_add_up_and_resumes_from_cache(tmp_path):
    a, b = _write_sources(tmp_path)
    m = _run_stage(tmp_path, 'scheduler="processes"')
    out = tmp_path / "data/dedup"
    items = pq.read_table(out / "items.parquet")
    excl = pq.read_table(out / "exclusions.parquet").to_pylist()
    assert items.num_rows + len(excl) == len(a) + len(b) == m["items_in"]
    assert {e["reason"] for e in excl} == {"duplicate"} and len(excl) == 7
    assert "cluster_id" in items.column_names and all(items.column("cluster_id").to_pylist())
    assert "boot?" not in items.column("question").to_pylist()  # bootstrap split is not pooled
    by_q = dict(zip(items.column("question").to_pylist(), items.column("cluster_id").to_pylist()))
    for i in range(6, 10):
        assert by_q[f"Other {i - 6}?"] == by_q[f"Question {i}?"]
    report = json.loads((out / "report.json").read_text())
    assert report["clusters"]["count"] == m["clusters"] == 24 and report["duplicates"]["count"] == 7
    first = (out / "items.parquet").read_bytes()
    assert m["hash_chunks_from_cache"] == 0 and m["hash_chunks"] == 2
    # a re-run hashes nothing and writes the same bytes; after a kill, finished chunks are kept and the rest is done
    m2 = _run_stage(tmp_path, 'scheduler="synchronous"')
    assert m2["hash_chunks_from_cache"] == 2
    assert (out / "items.parquet").read_bytes() == first
    sorted((tmp_path / "data/cache/dedup").rglob("*.parquet"))[0].unlink()
    m3 = _run_stage(tmp_path, 'scheduler="threads"')
    assert m3["hash_chunks_from_cache"] == 1
    assert (out / "items.parquet").read_bytes() == first


def test_parallel_hashing_equals_serial(tmp_path):
    _write_sources(tmp_path)
    paths = [tmp_path / "data/gather/alpha/items.parquet", tmp_path / "data/gather/beta/items.parquet"]
    h1, e1, _ = hash_files(paths, SPEC, scheduler="synchronous", workers=1, chunk_rows=8)
    h2, e2, _ = hash_files(paths, SPEC, scheduler="threads", workers=2, chunk_rows=8)
    np.testing.assert_array_equal(h1, h2)
    assert e1 == e2 and h1.shape == (35, SPEC.n_variants)
