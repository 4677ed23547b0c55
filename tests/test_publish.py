"""The published folder: every config loads back with `datasets` unchanged, the card is real and valid, bad rows are
excluded with a reason, builds are deterministic, and broken folders are caught by validation."""
from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from pipeline.config import build
from pipeline.publish.build import build_dataset
from pipeline.publish.folder import manifest
from pipeline.publish.inputs import PublishError
from pipeline.publish.params import PublishParams
from pipeline.publish.validate import validate_card, validate_folder
from pipeline.schema import EXCLUSION_FEATURES, LABELS, ROLLOUT_FEATURES
from test_publish_world import SPLIT_SIZES, make_world, publishable


def _params(**kw) -> PublishParams:
    return build(PublishParams, {"shard_rows": 4, "verl": {"enabled": False}, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    splits = make_world(root, bad_rows=True)
    result = build_dataset(_params(verify_load=False), root, params_file=root / "params.yaml")
    return root, splits, result


def _load(folder: Path, config: str, cache: Path) -> datasets.DatasetDict:
    return datasets.load_dataset(str(folder), config, cache_dir=str(cache))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-6
    return a == b


def test_default_config_roundtrip(built, tmp_path):
    root, splits, result = built
    ds = _load(result.folder, "default", tmp_path)
    assert list(ds) == ["train", "validation", "test"]
    feats = ds["train"].features
    assert feats["label"] == datasets.ClassLabel(names=list(LABELS))
    assert isinstance(feats["image"], datasets.Image)
    assert feats["aliases"] == datasets.List(datasets.Value("string"))
    for split, rows in splits.items():
        good = [r for r in rows if publishable(r)]
        assert len(good) == SPLIT_SIZES[split]
        got = ds[split].cast_column("image", datasets.Image(decode=False)).to_list()
        assert len(got) == len(good)
        for want, have in zip(good, got):
            for key, value in want.items():
                if key == "label":
                    assert have["label"] == LABELS.index(value)
                elif key == "image":
                    if value is None:
                        assert have["image"] is None
                    else:  # bytes unchanged; only the file name of the local path is published
                        assert have["image"]["bytes"] == value["bytes"]
                        assert have["image"]["path"] == PurePosixPath(value["path"]).name
                else:
                    assert _same(value, have[key]), (split, key, value, have[key])


def test_extra_configs_roundtrip(built, tmp_path):
    root, splits, result = built
    evidence = _load(result.folder, "probe_evidence", tmp_path)["train"]
    want = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("data/probe/*/evidence.parquet"))]).to_pylist()
    assert evidence.features == ROLLOUT_FEATURES
    assert len(evidence) == len(want) == 42
    for w, h in zip(want, evidence.to_list()):
        assert all(_same(w[k], h[k]) for k in w)

    # search_cache: exactly the export rows whose key the published items' evidence used
    published = {r["id"] for rows in splits.values() for r in rows if publishable(r)}
    keys = {c["cache_key"] for r in want if r["item_id"] in published for c in json.loads(r["tool_calls"])}
    export = pq.read_table(root / "data/cache/search/export.parquet").to_pylist()
    cache = _load(result.folder, "search_cache", tmp_path)["train"]
    assert cache.to_list() == [r for r in export if r["key"] in keys]
    assert "txt-unpublished" not in cache["key"] and all("serpapi" != b for b in cache["backend"])
    thumbs = [h["thumbnail"] for row in cache.to_list() for h in row["hits"] if h["thumbnail"]]
    assert len(thumbs) == 9 and all(t["bytes"].startswith(b"\x89PNG") for t in thumbs)  # nested images survive
    assert result.cache_stats == {"entries_in_export": len(export), "entries_published": len(cache),
                                  "keys_referenced": len(keys), "keys_missing": 1}

    excl = _load(result.folder, "exclusions", tmp_path)["train"]
    assert excl.features == EXCLUSION_FEATURES
    dup = excl.to_list()[[r["id"] for r in excl.to_list()].index("dup-1")]
    assert json.loads(dup["record"])["image"] == "raw/img_7.png" and "image raw/img_7.png near" in dup["detail"]
    assert str(root.resolve()) not in dup["record"]
    stages = sorted(zip(excl["stage"], excl["reason"]))
    assert stages == sorted([("dedup", "near_duplicate")] + [("balance", "over_quota")] * 3
                            + [("publish", "image_invalid"), ("publish", "label_unknown"), ("publish", "text_empty")])


def test_bad_rows_are_excluded_with_reasons(built):
    root, splits, result = built
    assert result.rows_in["train"] == result.rows["default"]["train"] + len(result.excluded)
    by_reason = {e["reason"]: e for e in result.excluded}
    assert "maybe_search" in by_reason["label_unknown"]["detail"]
    bad_id = next(r["id"] for r in splits["train"] if r["label"] == "maybe_search")
    assert by_reason["label_unknown"]["id"] == bad_id and bad_id in by_reason["label_unknown"]["detail"]
    assert set(by_reason) == {"label_unknown", "text_empty", "image_invalid"}
    assert json.loads(by_reason["image_invalid"]["record"])["question"].startswith("Which country")


def test_card_is_valid_and_made_of_real_figures(built):
    root, splits, result = built
    text = (result.folder / "README.md").read_text()
    assert validate_card(text, result.folder) == []
    assert validate_folder(result.folder) == []
    card = DatasetCard(text)
    assert set(card.data.license) == {"cc-by-sa-4.0", "mit", "other"}
    assert {c["config_name"] for c in card.data.configs} == {"default", "probe_evidence", "search_cache", "exclusions"}
    # figures from the metrics files and the data
    assert "75.0%" in text  # hit rate: 60 hits / 80 lookups of the probe metrics file
    assert "| `search_free` | 7 | 5 |" in text  # 7 before balancing (labels.parquet), 5 published
    assert "No metrics file matched `data/label/metrics.json`" in text  # missing metrics are said, not invented
    assert "No metrics file matched `data/gather/*/metrics.json`" in text
    assert "`contamination.test_overlap` | 0" in text
    assert "(plots/label_counts.png)" in text and (result.folder / "plots/label_counts.png").exists()
    assert "sk-should-not-appear" not in text and "<redacted>" in text
    assert "/somewhere/on/disk" not in text
    # absolute paths in the metrics files are written relative to ~ or to the project root, as in the tables
    assert "| `model_path` | ~/.cache/probe-model |" in text and "| `parts_dir` | data/probe_parts |" in text
    assert str(root.resolve()) not in text and str(Path.home()) + "/" not in text
    for shard in result.folder.glob("data/default/*.parquet"):
        assert b"/somewhere/on/disk" not in shard.read_bytes()


def test_build_is_deterministic_and_sharded(tmp_path):
    make_world(tmp_path)
    p = _params(verify_load=True)
    first = build_dataset(p, tmp_path, params_file=tmp_path / "params.yaml")
    assert first.problems == []  # verify_load loaded every config back
    m1 = manifest(first.folder)
    second = build_dataset(p, tmp_path, params_file=tmp_path / "params.yaml")
    assert manifest(second.folder) == m1
    names = sorted(f["path"] for f in m1 if f["path"].startswith("data/default/train"))
    assert names == [f"data/default/train-{i:05d}-of-00003.parquet" for i in range(3)]  # 9 rows, 4 per shard
    assert not (tmp_path / "data/publish/dataset.tmp").exists()


def test_missing_cache_and_label_metrics(tmp_path):
    make_world(tmp_path, with_cache=False, with_label_metrics=True)
    result = build_dataset(_params(verify_load=False), tmp_path)
    assert "search_cache" not in result.rows
    text = (result.folder / "README.md").read_text()
    assert "No search-cache export was found" in text
    assert "No metrics file matched `data/label/metrics.json`" not in text
    assert "`labelled` | 20" in text
    assert validate_folder(result.folder) == []


def test_cache_all_entries_from_the_cache_database(tmp_path, tmp_path_factory):
    make_world(tmp_path, cache_file="sqlite")  # no export: the database is exported on the fly
    assert not (tmp_path / "data/cache/search/export.parquet").exists()
    result = build_dataset(_params(verify_load=True, cache_entries="all"), tmp_path)
    assert result.problems == []
    other = tmp_path_factory.mktemp("exported")
    export = make_world(other) and other / "data/cache/search/export.parquet"
    want = pq.read_table(export)
    got = _load(result.folder, "search_cache", tmp_path / "hf")["train"]
    assert len(got) == len(want) == 31  # 10 image + 19 text entries + 2 never referenced; the failure is no entry
    assert got["key"] == want.column("key").to_pylist()


def test_missing_column_names_file_and_column(tmp_path):
    make_world(tmp_path)
    path = tmp_path / "data/balance/validation.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["cluster_id"]), path)
    with pytest.raises(PublishError, match=r"'validation'.*cluster_id"):
        build_dataset(_params(), tmp_path)


def test_validation_catches_broken_folders(built, tmp_path):
    import shutil

    root, splits, result = built
    folder = tmp_path / "copy"
    shutil.copytree(result.folder, folder)
    readme = folder / "README.md"
    good = readme.read_text()

    readme.write_text(good.replace("- mit\n", "- my-own-licence\n"))
    assert any("my-own-licence" in p for p in validate_folder(folder))

    readme.write_text(good.replace("path: data/default/test-*.parquet", "path: data/default/nothing-*.parquet"))
    assert any("nothing-*" in p for p in validate_folder(folder))

    readme.write_text(good)
    # a cluster in two splits: move one test row's cluster to a train cluster
    shard = folder / "data/default/test-00000-of-00001.parquet"
    t = pq.read_table(shard)
    train_cluster = pq.read_table(folder / "data/default/train-00000-of-00003.parquet").column("cluster_id")[0].as_py()
    clusters = t.column("cluster_id").to_pylist()
    clusters[0] = train_cluster
    t = t.set_column(t.column_names.index("cluster_id"), "cluster_id", pa.array(clusters, pa.string()))
    pq.write_table(t, shard)
    assert any("straddles" in p and train_cluster in p for p in validate_folder(folder))

    readme.write_text("no header\n")
    assert validate_folder(folder) == ["README.md: the card must start with a YAML header (---)"]


def test_card_is_a_datasetcard_of_the_template_with_its_metadata(tmp_path):
    from huggingface_hub import DatasetCardData

    from pipeline.publish.card import CardError, render_card

    data = DatasetCardData(license=["mit"], pretty_name="x", tags=["vqa"])
    ok = tmp_path / "ok.md.jinja"
    ok.write_text("---\n{{ card_data }}\n---\n# {{ pretty_name }} {{ 0.5 | pct }}\n")
    card = render_card({"pretty_name": "Title"}, data, ok)
    assert card.data.to_dict() == data.to_dict() and card.text.strip() == "# Title 50.0%"

    no_header = tmp_path / "no_header.md.jinja"  # the metadata made by the libraries must reach the card
    no_header.write_text("# {{ pretty_name }}\n")
    with pytest.raises(CardError, match="card_data"):
        render_card({"pretty_name": "Title"}, data, no_header)
    undefined = tmp_path / "undefined.md.jinja"  # a figure the context lacks is an error, not a blank
    undefined.write_text("---\n{{ card_data }}\n---\n{{ not_given }}\n")
    with pytest.raises(CardError, match="not_given"):
        render_card({}, data, undefined)


def test_images_given_by_local_path_are_embedded_with_their_file_name(tmp_path):
    from pipeline.publish.folder import make_config

    from test_publish_world import png

    (tmp_path / "a.png").write_bytes(png(1))
    features = datasets.Features({"n": datasets.Value("int32"), "image": datasets.Image()})
    rows = [{"n": 0, "image": {"bytes": None, "path": str(tmp_path / "a.png")}},
            {"n": 1, "image": {"bytes": png(2), "path": "/somewhere/on/disk/b.png"}}, {"n": 2, "image": None}]
    config = make_config("extra", {"train": pa.Table.from_pylist(rows, schema=features.arrow_schema)})
    assert config.table("train").column("image").to_pylist() == [
        {"bytes": png(1), "path": "a.png"}, {"bytes": png(2), "path": "b.png"}, None]

    rows[0]["image"]["path"] = str(tmp_path / "gone.png")
    with pytest.raises(PublishError, match=r"'extra' split 'train'.*cannot be read"):
        make_config("extra", {"train": pa.Table.from_pylist(rows, schema=features.arrow_schema)})


def test_empty_splits_are_named_not_published(tmp_path):
    make_world(tmp_path)
    path = tmp_path / "data/balance/validation.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    result = build_dataset(_params(verify_load=True, verl={"enabled": True}), tmp_path)
    assert result.problems == []  # datasets cannot load an empty split, so it is left out of the folder
    assert result.rows["default"] == {"train": SPLIT_SIZES["train"], "test": SPLIT_SIZES["test"]}
    assert not list(result.folder.glob("data/default/validation-*"))
    assert "`default/validation` is not in this folder: the split has no rows after balancing" in (result.folder / "README.md").read_text()
    assert result.verl_rows == {"train": SPLIT_SIZES["train"], "validation": 0, "test": SPLIT_SIZES["test"]}

    for split in SPLIT_SIZES:
        path = tmp_path / "data/balance" / f"{split}.parquet"
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(PublishError, match="nothing to publish: every split in data/balance is empty"):
        build_dataset(_params(), tmp_path)
    assert (result.folder / "README.md").exists()  # the last good folder stays


@pytest.mark.parametrize("text, ids", [
    ("MIT (flagpy flag, countryinfo facts)", ["mit"]),  # licence strings as the demo world gathers them
    ("public-domain (NASA)", ["other"]),
    ("BSD-3-Clause (scikit-image)", ["bsd-3-clause"]),
    ("CC-BY-SA-4.0 AND public-domain", ["cc-by-sa-4.0", "other"]),
    ("CC BY-SA 4.0; Apache 2.0", ["cc-by-sa-4.0", "apache-2.0"]),
    ("see data_source", ["other"]),
    ("", ["unknown"]),
])
def test_hub_licence_ids(text, ids):
    from pipeline.publish.card import hub_license_ids

    assert hub_license_ids(text) == ids
