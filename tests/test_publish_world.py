"""A small synthetic pipeline output (balanced splits, evidence, cache export, exclusions, metrics) for the
publish and veRL tests. Built with the schema helpers; images are real PNGs made with PIL."""
from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
from PIL import Image

from pipeline.io import exclusion, write_exclusions, write_json
from pipeline.search.cache import SearchCache, cache_key
from pipeline.search.types import SearchHit
from pipeline.schema import ITEM_FEATURES, LABEL_FEATURES, ROLLOUT_FEATURES, label_row, make_item_id, sha1_hex, to_json, write_table

LABEL_CYCLE = ["search_free", "image_search_required", "text_search_required", "mixed_search_required",
               "search_free", "unanswerable"]
SPLIT_SIZES = {"train": 9, "validation": 4, "test": 3}


def png(seed: int) -> bytes:
    img = Image.new("RGB", (8 + seed % 5, 6), color=((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_item(n: int, split: str) -> dict:
    source = "demo" if n % 3 else "easy_vqa"
    image = png(n) if n % 4 != 3 else None  # some items have no image
    sha = sha1_hex(image) if image else ""
    question, answer = f"Which country has flag number {n}?", f"Country {n}"
    label = LABEL_CYCLE[n % len(LABEL_CYCLE)]
    return {
        "image": {"bytes": image, "path": f"/somewhere/on/disk/img_{n}.png"} if image else None,
        "image_sha1": sha,
        "question": question,
        "answer": answer,
        "aliases": [f"C{n}", f"Land {n}"][: n % 3],
        "source": source,
        "category": "flag_country" if n % 2 else "visual",
        "license": "MIT" if source == "easy_vqa" else "CC-BY-SA-4.0 AND public-domain",
        "entity": f"entity-{n}",
        "meta": to_json({"url": f"https://example.org/{n}.png", "n": n}),
        **label_row(make_item_id(source, question, answer, sha), label, rule_version="1.0",
                    pass_rate_closed_book=0.25 * (n % 5), pass_rate_tools=float("nan") if n == 2 else 0.5,
                    n_rollouts=8, confidence=0.75, reason=f"rule says {label}"),
        "cluster_id": f"c{n // 2 if split == 'train' else 1000 + n}",
    }


# what balance writes: item columns, label columns with the label as a string, cluster_id
SPLIT_FEATURES = datasets.Features({
    **ITEM_FEATURES,
    "label": datasets.Value("string"),
    **{k: v for k, v in LABEL_FEATURES.items() if k not in ("id", "label")},
    "cluster_id": datasets.Value("string"),
})
SPLIT_SCHEMA = SPLIT_FEATURES.arrow_schema


def publishable(row: dict) -> bool:
    """What publish must keep: a known label, non-empty text, an image with bytes or no image at all."""
    from pipeline.schema import LABELS

    image_ok = row["image"] is None or bool(row["image"].get("bytes"))
    return row["label"] in LABELS and bool(row["question"].strip()) and image_ok


def image_key(i: int) -> str:
    return cache_key("image_search", "local", "phash-1", f"sha1:{i}")


def text_key(i: int, s: int) -> str:
    return cache_key("text_search", "local", "bm25-1", f"q{i}-{s}")


def write_cache(root: Path, cache_file: str = "export") -> Path:
    """The search cache as the search package stores it (sqlite) and exports it (parquet): entries for the evidence's
    calls except one, one entry of an unpublished item, one never used, one recorded failure."""
    db = root / "data/cache/search/cache.sqlite"
    cache = SearchCache(db)
    for i in range(10):
        cache.put(image_key(i), "image_search", "local", "phash-1", f"sha1:{i}", f"image sha1:{i}", 3,
                  [SearchHit(f"page {i}", f"https://example.org/p{i}", "a page", png(100 + i))])
        for s in range(2):
            if (i, s) != (3, 1):  # referenced by the evidence but absent from the cache
                cache.put(text_key(i, s), "text_search", "local", "bm25-1", f"q{i}-{s}", f"q{i}", 2,
                          [SearchHit(f"doc {i}", "", f"snippet {i}")])
    cache.put("txt-unpublished", "text_search", "local", "bm25-1", "zzz", "zzz", 2, [])
    cache.put(cache_key("text_search", "serpapi", "2024", "unused"), "text_search", "serpapi", "2024", "unused", "unused", 2, [])
    cache.record_failure("failed-key", "text_search", "serpapi", "2024", "x", "x", "quota exceeded")
    out = db
    if cache_file == "export":
        out = root / "data/cache/search/export.parquet"
        cache.export_parquet(out)
    cache.close()
    if cache_file == "export":
        db.unlink()
        for extra in db.parent.glob("cache.sqlite-*"):
            extra.unlink()
    return out


def make_world(root: Path, *, bad_rows: bool = False, with_cache: bool = True, with_label_metrics: bool = False,
               cache_file: str = "export") -> dict:
    """Write the synthetic outputs under `root/data`; returns {split: [rows]} of what balance 'wrote'."""
    splits, n = {}, 0
    for split, size in SPLIT_SIZES.items():
        rows = []
        for _ in range(size):
            rows.append(make_item(n, split))
            n += 1
        if bad_rows and split == "train":
            bad = make_item(900, split)
            bad["label"] = "maybe_search"
            rows.append(bad)
            empty = make_item(901, split)
            empty["question"] = "   "
            rows.append(empty)
            broken = make_item(902, split)
            broken["image"] = {"bytes": None, "path": "lost.png"}
            rows.append(broken)
        write_table(pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA), root / "data/balance" / f"{split}.parquet")
        splits[split] = rows

    # probe evidence: two conditions, tool calls with cache keys (one key not in the export, one from an unpublished item)
    items = [r for rows in splits.values() for r in rows]
    for cond in ("closed_book", "tools"):
        ev = []
        for i, item in enumerate(items[:10]):
            for s in range(2):
                calls = [] if cond == "closed_book" else [
                    {"tool": "image_search", "query": "", "cache_key": image_key(i), "error": "", "n_results": 3},
                    {"tool": "text_search", "query": f"q{i}", "cache_key": text_key(i, s), "error": "", "n_results": 2},
                ]
                ev.append({
                    "rollout_id": f"{item['id']}/{cond}/{s}", "item_id": item["id"], "condition": cond, "sample": s,
                    "model": "tiny:text", "protocol": "mmsearch_r1", "saw_image": cond == "tools" and s == 0,
                    "messages": json.dumps([{"role": "user", "content": item["question"]}]),
                    "actions": ["image_search", "text_search", "answer"] if calls else ["answer"],
                    "tool_calls": json.dumps(calls), "n_image_search": 1 if calls else 0,
                    "n_text_search": 1 if calls else 0, "search_count": 2 if calls else 0, "final_answer": item["answer"] if s == 0 else "no",
                    "correct": s == 0, "judge": "em", "valid_format": True, "prompt_tokens": 10 + i,
                    "completion_tokens": 5, "latency_s": 0.5, "error": "",
                })
        ev.append({**ev[-1], "rollout_id": "unpublished/x/0", "item_id": "unpublished-item",
                   "tool_calls": json.dumps([{"tool": "text_search", "cache_key": "txt-unpublished"}])})
        table = datasets.Dataset.from_list(ev, features=ROLLOUT_FEATURES).data.table
        write_table(table, root / "data/probe" / cond / "evidence.parquet")
    # the probe's one metrics file, with absolute paths of this machine in it (a packaged model under ~, an output
    # under the root) that the card must not show
    write_json({"items": len(items[:10]), "model": "tiny:text", "samples": 2,
                "per_condition": {c: {"rollouts": 21} for c in ("closed_book", "tools")},
                "search": {"calls": 80, "hits": 60, "misses": 20},
                "model_path": str(Path.home() / ".cache/probe-model"),
                "parts_dir": str(Path(root).resolve() / "data/probe_parts")},
               root / "data/probe/metrics.json")

    if with_cache:
        write_cache(root, cache_file)

    local_file = str(Path(root).resolve() / "raw" / "img_7.png")  # a path of this machine inside a record
    write_exclusions([exclusion("dup-1", "dedup", "demo", "near_duplicate", f"image {local_file} near-duplicate of demo-x",
                                {"q": "a", "image": local_file})],
                     root / "data/dedup/exclusions.parquet")
    write_exclusions([exclusion(f"bal-{i}", "balance", "demo", "over_quota", "search_free over its share") for i in range(3)],
                     root / "data/balance/exclusions.parquet")
    write_exclusions([], root / "data/label/exclusions.parquet")
    write_json({"before": {"search_free": 12}, "after": {"search_free": 4}, "target_search_share": 0.68},
               root / "data/balance/metrics.json")
    write_json({"duplicates": 1, "clusters": 14, "contamination": {"test_overlap": 0}}, root / "data/dedup/metrics.json")
    if with_label_metrics:
        write_json({"labelled": 20}, root / "data/label/metrics.json")
    labels = [label_row(f"x{i}", LABEL_CYCLE[i % 6], rule_version="1.0", pass_rate_closed_book=0.0,
                        pass_rate_tools=0.0, pass_rate_image_only=0.0, pass_rate_text_only=0.0, n_rollouts=4,
                        confidence=1.0) for i in range(21)]
    write_table(datasets.Dataset.from_list(labels, features=LABEL_FEATURES).data.table, root / "data/label/labels.parquet")
    (root / "data/balance").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (200, 10, 10)).save(root / "data/balance/label_counts.png")
    (root / "params.yaml").write_text("publish:\n  shard_rows: 4\nsearch:\n  serpapi_key_env: SERPAPI_API_KEY\n  api_key: sk-should-not-appear\n")
    return splits
