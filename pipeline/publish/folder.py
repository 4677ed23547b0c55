"""The Hugging Face dataset folder: parquet shards per config and split, validation, and the push to the Hub.

Reads:  the balanced splits (item columns + label columns with the label as a string + cluster_id), probe evidence
        parquets (ROLLOUT_FEATURES), the search-cache export (key, tool, backend, backend_version, input,
        result_json, error) and exclusion tables (EXCLUSION_FEATURES).
Writes: `<folder>/data/<config>/<split>-0000i-of-0000n.parquet` (HF features in the Arrow schema metadata);
        the card (README.md) is written by `pipeline.publish.card`. `push_folder` uploads a folder in one Hub commit.

Configs: `default` (the splits; label as ClassLabel over `pipeline.schema.LABELS`, image as Image, aliases as a
list), `probe_evidence`, `search_cache` and `exclusions` (one `train` split each).
Rows of a split that break the contract (unknown label, empty question, broken image struct) are not published:
they come back as exclusion rows (stage "publish") so that rows in = rows out + excluded.
"""
from __future__ import annotations

import collections
import dataclasses
import glob as globmod
import hashlib
import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Literal, Mapping

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io import exclusion
from pipeline.schema import (
    EXCLUSION_FEATURES,
    ITEM_FEATURES,
    LABEL_FEATURES,
    LABELS,
    ROLLOUT_FEATURES,
    write_table,
)

DEFAULT_CONFIG = "default"
EXTRA_SPLIT = "train"  # the one split of the extra configs (the Hub's convention for single-split data)
METRIC_SECTIONS = ("gather", "dedup", "bootstrap", "probe", "label", "balance", "search")  # sections of the card
CACHE_COLUMNS = ("key", "tool", "backend", "backend_version", "input")  # the rest of the export is kept as is
STAGE = "publish"


class PublishError(ValueError):
    """Input or folder that cannot be published; the message names the file/column/config and what to do."""


def split_features(extra: datasets.Features | None = None) -> datasets.Features:
    """Features of the `default` config: items, label columns (label as ClassLabel), cluster_id, then `extra`."""
    feats: dict[str, Any] = dict(ITEM_FEATURES)
    feats.update({k: v for k, v in LABEL_FEATURES.items() if k != "id"})
    feats["cluster_id"] = datasets.Value("string")
    for k, v in (extra or {}).items():
        if k not in feats:
            feats[k] = v
    return datasets.Features(feats)


REQUIRED_SPLIT_COLUMNS = tuple(split_features())


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PreparedSplit:
    table: pa.Table  # cast to `features`, bad rows removed
    excluded: list[dict]  # exclusion rows for the removed ones
    rows_in: int


def _bad_images(col: pa.ChunkedArray) -> list[bool]:
    """Per row: an image struct is present but holds no bytes (computed in Arrow; image bytes are not copied)."""
    if not pa.types.is_struct(col.type) or col.type.get_field_index("bytes") < 0:
        return [False] * len(col)
    data = pc.struct_field(col, "bytes")
    empty = pc.or_kleene(pc.is_null(data), pc.equal(pc.binary_length(data), 0))
    return pc.and_(col.is_valid(), pc.fill_null(empty, True)).to_pylist()


def prepare_split(path: str | os.PathLike, split: str) -> PreparedSplit:
    """Read one balanced split and cast it to `split_features()`; rows that break the contract become exclusions.

    A missing column or a column of the wrong kind raises PublishError (the whole file is unusable)."""
    path = Path(path)
    if not path.exists():
        raise PublishError(f"split {split!r}: {path} not found; run the balance stage first (dvc repro balance)")
    table = pq.read_table(path)
    missing = [c for c in REQUIRED_SPLIT_COLUMNS if c not in table.column_names]
    if missing:
        raise PublishError(
            f"split {split!r} ({path}): column(s) {', '.join(missing)} missing; the balance stage must write the item "
            "columns, the label columns and cluster_id (re-run it with the current code)"
        )
    extra_names = [c for c in table.column_names if c not in REQUIRED_SPLIT_COLUMNS]
    extra = datasets.Features.from_arrow_schema(table.select(extra_names).schema) if extra_names else None
    features = split_features(extra)

    label_col = table.column("label")
    if pa.types.is_integer(label_col.type):  # already ClassLabel ids: map back so one code path checks them
        ids = label_col.to_pylist()
        label_col = pa.chunked_array([pa.array([LABELS[i] if i is not None and 0 <= i < len(LABELS) else f"<id {i}>" for i in ids], pa.string())])
    elif not (pa.types.is_string(label_col.type) or pa.types.is_large_string(label_col.type)):
        raise PublishError(f"split {split!r} ({path}): column 'label' has type {label_col.type}; expected the label name (string)")
    table = table.set_column(table.column_names.index("label"), "label", label_col.cast(pa.string()))

    light = table.select(["id", "question", "answer", "source"]).to_pylist()
    labels = table.column("label").to_pylist()
    bad_image = _bad_images(table.column("image"))
    keep: list[bool] = []
    excluded: list[dict] = []
    for i, row in enumerate(light):
        item_id = row.get("id") or f"{split}:{i}"
        problem, reason = "", ""
        if not row.get("id"):
            reason, problem = "id_missing", "row has no id; items need make_item_id ids (re-run gather)"
        elif labels[i] not in LABELS:
            reason, problem = "label_unknown", f"label {labels[i]!r} is not one of {list(LABELS)}; re-run the label stage"
        elif not (row.get("question") or "").strip() or not (row.get("answer") or "").strip():
            reason, problem = "text_empty", "question or answer is empty; fix the source row or drop it in gather"
        elif bad_image[i]:
            reason, problem = "image_invalid", "image struct has no bytes; re-run gather for this item"
        keep.append(not problem)
        if problem:
            excluded.append(exclusion(str(item_id), STAGE, str(row.get("source") or ""), reason,
                                      f"split {split!r}: item {item_id!r}: {problem}", {**row, "label": labels[i]}))

    mask = pa.array(keep, pa.bool_())
    table = table.filter(mask) if len(table) else table
    label_ids = pc.index_in(table.column("label"), value_set=pa.array(LABELS, pa.string())).cast(pa.int64())
    arrays = []
    for name, feature in features.items():
        col = label_ids if name == "label" else table.column(name)
        if name == "image":
            col = _image_paths_to_basenames(col)
        try:
            arrays.append(col.cast(features.arrow_schema.field(name).type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PublishError(f"split {split!r} ({path}): column {name!r} ({col.type}) cannot become {feature}: {exc}") from None
    out = pa.Table.from_arrays(arrays, schema=features.arrow_schema)
    return PreparedSplit(out, excluded, rows_in=len(keep))


def _image_paths_to_basenames(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Keep only the file name of `image.path`: a local directory must not be published."""
    if not pa.types.is_struct(col.type) or col.type.get_field_index("path") < 0:
        return col
    chunks = []
    for chunk in col.chunks:
        paths = chunk.field("path").to_pylist()
        names = pa.array([PurePosixPath(p.replace("\\", "/")).name if p else None for p in paths], pa.string())
        chunks.append(pa.StructArray.from_arrays([chunk.field("bytes"), names], names=["bytes", "path"], mask=chunk.is_null()))
    return pa.chunked_array(chunks, type=pa.struct([("bytes", col.type.field("bytes").type), ("path", pa.string())]))


# ---------------------------------------------------------------------------------------------------------------
# Extra configs
# ---------------------------------------------------------------------------------------------------------------
def expand(patterns: Iterable[str], root: Path) -> list[Path]:
    """Sorted, de-duplicated files matching glob `patterns` (relative to `root`)."""
    out: list[Path] = []
    for pat in patterns:
        for p in sorted(globmod.glob(str(root / pat))):
            if Path(p).is_file() and Path(p) not in out:
                out.append(Path(p))
    return out


def _cast_to(table: pa.Table, features: datasets.Features, what: str) -> pa.Table:
    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise PublishError(f"{what}: column(s) {', '.join(missing)} missing; re-run the stage that wrote it")
    try:
        return table.select(list(features)).cast(features.arrow_schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PublishError(f"{what}: does not match the expected schema: {exc}") from None


def concat_tables(paths: Iterable[Path], features: datasets.Features, what: str) -> pa.Table:
    """All rows of `paths` (in order) cast to `features`; an empty table with the schema when there are none."""
    tables = [_cast_to(pq.read_table(p), features, f"{what} {p}") for p in paths]
    if not tables:
        return features.arrow_schema.empty_table()
    return pa.concat_tables(tables).replace_schema_metadata(features.arrow_schema.metadata)


def probe_evidence_table(paths: Iterable[Path]) -> pa.Table:
    return concat_tables(paths, ROLLOUT_FEATURES, "probe evidence")


def exclusions_table(paths: Iterable[Path], extra_rows: list[dict] = ()) -> pa.Table:
    table = concat_tables(paths, EXCLUSION_FEATURES, "exclusion table")
    if extra_rows:
        more = datasets.Dataset.from_list(list(extra_rows), features=EXCLUSION_FEATURES).data.table
        table = pa.concat_tables([table, more.cast(EXCLUSION_FEATURES.arrow_schema)])
    return table.replace_schema_metadata(EXCLUSION_FEATURES.arrow_schema.metadata)


def referenced_cache_keys(evidence: pa.Table, item_ids: set[str] | None = None) -> set[str]:
    """Cache keys of every tool call in the evidence (of `item_ids` only, when given)."""
    keys: set[str] = set()
    for item_id, calls in zip(evidence.column("item_id").to_pylist(), evidence.column("tool_calls").to_pylist()):
        if item_ids is not None and item_id not in item_ids:
            continue
        try:
            parsed = json.loads(calls or "[]")
        except json.JSONDecodeError:
            continue
        for call in parsed if isinstance(parsed, list) else []:
            key = call.get("cache_key") if isinstance(call, dict) else None
            if key:
                keys.add(key)
    return keys


def read_cache_export(path: Path) -> pa.Table:
    """The search-cache export at `path`: a parquet export, or the cache database itself (*.sqlite / *.db),
    exported on the fly with the search package's `SearchCache.export_parquet` into a temporary file."""
    if path.suffix in (".sqlite", ".db"):
        import tempfile

        from pipeline.search.cache import SearchCache

        with tempfile.TemporaryDirectory(prefix="publish-cache-") as tmp:
            out = Path(tmp) / "export.parquet"
            cache = SearchCache(path)
            try:
                cache.export_parquet(out)
            finally:
                cache.close()
            return pq.read_table(out)
    return pq.read_table(path)


def search_cache_table(path: Path, keys: set[str] | None) -> tuple[pa.Table, dict]:
    """The cache export at `path` (see `read_cache_export`), restricted to `keys` (None = all), rows sorted by key.
    Returns (table, stats)."""
    table = read_cache_export(path)
    missing = [c for c in CACHE_COLUMNS if c not in table.column_names]
    if missing:
        raise PublishError(f"search cache export {path}: column(s) {', '.join(missing)} missing; re-export the cache "
                           "with the search package (SearchCache.export_parquet)")
    table = table.select(list(CACHE_COLUMNS) + [c for c in table.column_names if c not in CACHE_COLUMNS])
    total = len(table)
    if keys is not None:
        table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(sorted(keys), table.column("key").type)))
    table = table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")]))
    features = datasets.Features.from_arrow_schema(table.schema)
    table = table.replace_schema_metadata(features.arrow_schema.metadata)
    present = set(table.column("key").to_pylist())
    stats = {"entries_in_export": total, "entries_published": len(table)}
    if keys is not None:
        stats.update(keys_referenced=len(keys), keys_missing=len(keys - present))
    return table, stats


def scrub_local_paths(table: pa.Table, root: Path) -> pa.Table:
    """Rewrite absolute paths of this machine inside string columns (exclusion records, meta, messages) as paths
    relative to the project root (or to ~): a published dataset must not carry local directories."""
    prefixes = [(str(Path(root).resolve()) + "/", ""), (str(Path.home()) + "/", "~/")]
    prefixes = [(a, b) for a, b in prefixes if len(a) > 2]
    for i, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = table.column(i)
        for pattern, repl in prefixes:
            col = pc.replace_substring(col, pattern=pattern, replacement=repl)
        table = table.set_column(i, field, col)
    return table


# ---------------------------------------------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------------------------------------------
def shard_paths(config: str, split: str, n: int) -> list[str]:
    return [f"data/{config}/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def write_shards(table: pa.Table, folder: Path, config: str, split: str, shard_rows: int) -> list[str]:
    """Write `table` as ceil(rows / shard_rows) parquet shards (at least one); returns their folder-relative paths."""
    n = max(1, math.ceil(len(table) / max(1, shard_rows)))
    rel = shard_paths(config, split, n)
    for i, r in enumerate(rel):
        write_table(table.slice(i * shard_rows, shard_rows), folder / r)
    return rel


@dataclasses.dataclass
class ConfigData:
    """One config's tables by split, plus what the card says about it."""

    name: str
    splits: dict[str, pa.Table]
    description: str = ""

    @property
    def features(self) -> datasets.Features:
        first = next(iter(self.splits.values()))
        return datasets.Features.from_arrow_schema(first.schema)


def write_configs(configs: list[ConfigData], folder: Path, shard_rows: int) -> dict[str, dict[str, list[str]]]:
    """Write every config's splits as shards under `folder/data/`; returns {config: {split: [paths]}}."""
    from pipeline.io import progress

    files: dict[str, dict[str, list[str]]] = {}
    jobs = [(c, s, t) for c in configs for s, t in c.splits.items()]
    for cfg, split, table in progress(jobs, desc="publish: shards", unit="split"):
        files.setdefault(cfg.name, {})[split] = write_shards(table, folder, cfg.name, split, shard_rows)
    return files


def dataset_infos(configs: list[ConfigData], folder: Path, files: Mapping[str, Mapping[str, list[str]]]) -> datasets.info.DatasetInfosDict:
    """`dataset_info` of every config with real sizes: rows and Arrow bytes per split, parquet bytes on disk."""
    infos = {}
    for cfg in configs:
        split_dict = datasets.SplitDict()
        download = 0
        for split, table in cfg.splits.items():
            split_dict.add(datasets.SplitInfo(name=split, num_bytes=int(table.nbytes), num_examples=len(table)))
            download += sum((folder / f).stat().st_size for f in files[cfg.name][split])
        info = datasets.DatasetInfo(features=cfg.features, splits=split_dict, download_size=download,
                                    dataset_size=sum(int(t.nbytes) for t in cfg.splits.values()))
        infos[cfg.name] = info
    return datasets.info.DatasetInfosDict(infos)


def metadata_configs(files: Mapping[str, Mapping[str, list[str]]]) -> list[dict]:
    """The card's `configs:` entries, default first, with a glob of shards per split."""
    out = []
    for name in sorted(files, key=lambda n: (n != DEFAULT_CONFIG, n)):
        entry: dict[str, Any] = {"config_name": name}
        if name == DEFAULT_CONFIG:
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"data/{name}/{s}-*.parquet"} for s in files[name]]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Manifest and validation
# ---------------------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path) -> list[dict]:
    """Every file of the folder (sorted, POSIX relative paths) with size and sha256: what a push uploads."""
    rows = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rows.append({"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)})
    return rows


def validate_folder(folder: Path) -> list[str]:
    """Problems that make the folder unfit to publish ([] when fine): the card (YAML header, configs, dataset_info)
    and every shard's schema against the card's features; labels in range; splits sharing no id or cluster."""
    from pipeline.publish.card import validate_card

    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.exists():
        return [f"{readme}: missing; the card is written by the publish stage"]
    problems = validate_card(readme.read_text(encoding="utf-8"), folder)
    if problems:
        return problems
    from huggingface_hub import DatasetCard
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    data = DatasetCard(readme.read_text(encoding="utf-8")).data
    infos = DatasetInfosDict.from_dataset_card_data(data)
    configs = MetadataConfigs.from_dataset_card_data(data)
    if DEFAULT_CONFIG not in configs:
        problems.append(f"README.md: no {DEFAULT_CONFIG!r} config")
    seen_ids: dict[str, str] = {}
    seen_clusters: dict[str, str] = {}
    for name, cfg in configs.items():
        features = infos[name].features if name in infos else None
        if features is None:
            problems.append(f"README.md: config {name!r} has no dataset_info features")
            continue
        for entry in cfg.get("data_files", []):
            split, pattern = entry["split"], entry["path"]
            shards = sorted(folder.glob(pattern))
            if not shards:
                problems.append(f"config {name!r} split {split!r}: no file matches {pattern!r}")
            rows = 0
            for shard in shards:
                schema = pq.read_schema(shard)
                got = datasets.Features.from_arrow_schema(schema)
                if got != features:
                    problems.append(f"{shard.relative_to(folder)}: features differ from the card's dataset_info of {name!r}")
                    continue
                rows += pq.read_metadata(shard).num_rows
                if name == DEFAULT_CONFIG:
                    t = pq.read_table(shard, columns=["id", "label", "cluster_id"])
                    labels = t.column("label")
                    if len(t) and (pc.min(labels).as_py() < 0 or pc.max(labels).as_py() >= len(LABELS)):
                        problems.append(f"{shard.relative_to(folder)}: label id outside 0..{len(LABELS) - 1}")
                    for item_id, cluster in zip(t.column("id").to_pylist(), t.column("cluster_id").to_pylist()):
                        if item_id in seen_ids:
                            problems.append(f"item {item_id!r} appears twice (splits {seen_ids[item_id]!r} and {split!r})")
                        seen_ids[item_id] = split
                        if cluster and seen_clusters.setdefault(cluster, split) != split:
                            problems.append(f"cluster {cluster!r} straddles splits {seen_clusters[cluster]!r} and {split!r}; "
                                            "dedup clusters must stay in one split (re-run balance)")
            split_info = infos[name].splits.get(split) if infos[name].splits else None
            if split_info is not None and split_info.num_examples != rows:
                problems.append(f"config {name!r} split {split!r}: card says {split_info.num_examples} rows, shards hold {rows}")
    return problems[:50]


# ---------------------------------------------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------------------------------------------
MANAGED_PREFIXES = ("data/", "plots/")  # remote paths a push owns (stale ones are deleted)


class PushRefused(RuntimeError):
    """The push was not attempted; the message says why and what to do. Nothing was uploaded."""


def _truthy(v: str | None) -> bool:
    return (v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when Hub access is switched off (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE when HF_HUB_OFFLINE is unset)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    if env is None:
        env = os.environ.get("TRANSFORMERS_OFFLINE")
    return _truthy(env) or constants.HF_HUB_OFFLINE


def check_push_ready(repo_id: str) -> None:
    """Raise PushRefused (nothing sent) when offline mode is on, `repo_id` is malformed or no token is available."""
    from huggingface_hub import get_token

    if hub_offline():
        raise PushRefused(
            "pushing needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1; `python -m stages` sets it unless you set "
            "it yourself). Nothing was uploaded. To push, run the command again with HF_HUB_OFFLINE=0 in its "
            "environment, e.g. `HF_HUB_OFFLINE=0 python -m stages publish --repo-id ORG/NAME --push`."
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushRefused(f"--repo-id {repo_id!r} must look like ORG/NAME (your user or organisation, then the dataset name)")
    if not get_token():
        raise PushRefused("no Hub token: set the HF_TOKEN environment variable or run `hf auth login` "
                          "(the token is read from there only and never written by this project)")


def push_folder(folder: Path, repo_id: str, *, revision: str = "main", private: bool = False,
                commit_message: str = "Upload dataset", endpoint: str | None = None) -> dict:
    """Upload every file of `folder` to the dataset repo `repo_id` in ONE commit; returns the commit record.

    The same commit deletes remote files under data/ and plots/ that the folder no longer has (stale shards).
    Creates the repo (exist_ok) and the branch `revision` when it is not main. The token comes only from HF_TOKEN or
    the login cache (huggingface_hub resolves it); it is never passed around, printed or stored here.
    Raises PushRefused before any request when offline, without a token, or when the folder fails validation."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    folder = Path(folder)
    check_push_ready(repo_id)
    problems = validate_folder(folder)
    if problems:
        raise PushRefused("the dataset folder failed validation, nothing was uploaded:\n  - " + "\n  - ".join(problems))
    files = manifest(folder)
    api = HfApi(endpoint=endpoint)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    ops: list = [CommitOperationAdd(path_in_repo=f["path"], path_or_fileobj=str(folder / f["path"])) for f in files]
    # Shards of an earlier push whose names changed (other shard count) would be picked up by the configs' globs:
    # delete what this folder manages (data/, plots/) but no longer has, in the same commit.
    local = {f["path"] for f in files}
    remote = api.list_repo_files(repo_id, repo_type="dataset", revision=revision or "main")
    stale = sorted(r for r in remote if r.startswith(MANAGED_PREFIXES) and r not in local)
    ops += [CommitOperationDelete(path_in_repo=r) for r in stale]
    info = api.create_commit(repo_id, operations=ops, commit_message=commit_message, repo_type="dataset",
                             revision=revision or "main")
    return {
        "repo_id": repo_id,
        "repo_url": str(repo_url),
        "revision": revision or "main",
        "commit_sha": info.oid,
        "commit_url": info.commit_url,
        "private": private,
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
        "deleted": stale,
        "manifest": files,
    }


# ---------------------------------------------------------------------------------------------------------------
# The whole folder
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BuildResult:
    folder: Path
    files: dict[str, dict[str, list[str]]]
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    rows_in: dict[str, int]  # split -> rows read
    excluded: list[dict]  # publish's own exclusions
    cache_stats: dict | None
    problems: list[str]
    verl_rows: dict[str, int]

    def metrics(self) -> dict:
        return {
            "rows": self.rows,
            "rows_in": self.rows_in,
            "excluded": len(self.excluded),
            "excluded_by_reason": dict(sorted(collections_counter(e["reason"] for e in self.excluded).items())),
            "search_cache": self.cache_stats or {},
            "problems": self.problems,
            "verl_rows": self.verl_rows,
            "files": sum(len(v) for c in self.files.values() for v in c.values()),
        }


def collections_counter(items: Iterable[str]) -> dict[str, int]:
    return dict(collections.Counter(items))


def _copy_plots(patterns: list[str], root: Path, folder: Path) -> list[dict]:
    import shutil

    out = []
    for src in expand(patterns, root):
        if src.suffix.lower() != ".png":
            continue
        name = src.name
        dest = folder / "plots" / name
        if dest.exists():  # same name from two folders: prefix the stage folder
            dest = folder / "plots" / f"{src.parent.name}-{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        out.append({"path": dest.relative_to(folder).as_posix(), "title": src.stem.replace("_", " ")})
    return out


def build_dataset(p, root: Path = Path("."), *, repo_id: str = "", params_file: str | Path = "params.yaml") -> BuildResult:
    """Build the HF dataset folder at `root/p.out_dir` (and the veRL export), deterministically, from scratch.
    `p` is the publish stage's Params (stages/publish.py: the `publish:` section of params.yaml).

    The folder is built next to its destination and swapped in at the end, so a killed run leaves the last good
    folder in place."""
    import shutil

    from pipeline.publish import card as cards
    from pipeline.io import progress

    root = Path(root)
    folder = root / p.out_dir
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    prepared = {s: prepare_split(root / p.balance_dir / f"{s}.parquet", s) for s in progress(p.splits, desc="publish: splits", unit="split")}
    features = {str(v.table.schema) for v in prepared.values()}
    if len(features) > 1:
        raise PublishError("the splits have different columns or types; re-run balance so every split has the same schema")
    own_excluded = [e for v in prepared.values() for e in v.excluded]
    published_ids = {i for v in prepared.values() for i in v.table.column("id").to_pylist()}

    configs = [ConfigData(DEFAULT_CONFIG, {s: v.table for s, v in prepared.items()},
                          "the search-balanced VQA items with their labels")]
    missing_configs = []
    evidence_paths = expand(p.probe_evidence, root)
    evidence = probe_evidence_table(evidence_paths)
    if evidence_paths:
        configs.append(ConfigData("probe_evidence", {EXTRA_SPLIT: evidence}, "every probe rollout (messages, tool calls, verdicts)"))
    else:
        missing_configs.append({"name": "probe_evidence", "reason": f"no file matched {', '.join(p.probe_evidence)}"})
        evidence = None

    cache_path = next((root / c for c in p.search_cache if (root / c).is_file()), None)
    cache, cache_stats = None, None
    if cache_path is not None:
        keys = referenced_cache_keys(evidence, published_ids) if (p.cache_entries == "referenced" and evidence is not None) else None
        cache, cache_stats = search_cache_table(cache_path, keys)
        configs.append(ConfigData("search_cache", {EXTRA_SPLIT: cache}, "search-tool cache entries for offline replay"))
    else:
        missing_configs.append({"name": "search_cache", "reason": "no search cache at " + ", ".join(f"`{c}`" for c in p.search_cache)})

    excl = exclusions_table(expand(p.exclusions, root), own_excluded)
    configs.append(ConfigData("exclusions", {EXTRA_SPLIT: excl}, "every item dropped by any stage, with its reason"))

    for cfg in configs:
        cfg.splits = {s: scrub_local_paths(t, root) for s, t in cfg.splits.items()}
    files = write_configs(configs, tmp, p.shard_rows)
    plots = _copy_plots(p.plots, root, tmp)
    infos = dataset_infos(configs, tmp, files)

    # ---- card ----
    from pipeline.curate.reference import card_summary as reference_card_summary

    metrics = cards.load_metrics(p.metrics, root)
    for name in METRIC_SECTIONS:
        metrics.setdefault(name, cards.MetricsSection(name, {}, []))
    split_labels = {s: cards.label_counts(v.table) for s, v in prepared.items()}
    after = {name: sum(c.get(name, 0) for c in split_labels.values()) for name in LABELS}
    before = None
    labels_path = root / p.labels_file
    if labels_path.exists():
        before = cards.label_counts(pq.read_table(labels_path, columns=["label"]))
    all_rows = pa.concat_tables([v.table.select(["source", "license"]) for v in prepared.values()])
    by_source: dict[str, dict] = {}
    for src, lic in zip(all_rows.column("source").to_pylist(), all_rows.column("license").to_pylist()):
        entry = by_source.setdefault(src, {"name": src, "rows": 0, "licenses": set()})
        entry["rows"] += 1
        entry["licenses"].add(lic or "unknown")
    sources = []
    hub_ids: list[str] = []
    for src in sorted(by_source):
        e = by_source[src]
        ids = sorted({i for lic in e["licenses"] for i in cards.hub_license_ids(lic)})
        hub_ids += ids
        sources.append({**e, "licenses": sorted(e["licenses"]), "hub_ids": ids})
    search_share = {s: (sum(c.get(n, 0) for n in cards.SEARCH_REQUIRED) / max(1, sum(c.values()))) for s, c in split_labels.items()}
    probe = cards.probe_summary(evidence)
    cache_info = cards.cache_summary(cache, cache_stats)
    rate, rate_source = cards.hit_rate(metrics)
    excl_counts = collections_counter(f"{s}\x1f{r}" for s, r in zip(excl.column("stage").to_pylist(), excl.column("reason").to_pylist()))
    rule_versions = sorted({r for v in prepared.values() for r in v.table.column("rule_version").to_pylist()} - {None})
    try:
        from pipeline.curate.label import RULE_VERSION as rule_version_code  # type: ignore
    except ImportError:
        rule_version_code = ""
    rid = repo_id or p.repo_id or "ORG/NAME"
    header = cards.card_header(
        licenses=hub_ids, pretty_name=p.pretty_name, task_categories=p.task_categories, language=p.language,
        tags=p.tags, total_rows=sum(len(v.table) for v in prepared.values()), configs=metadata_configs(files), infos=infos,
    )
    context = {
        "header": header,
        "pretty_name": p.pretty_name,
        "repo_id": rid,
        "configs": [{"name": c.name, "description": c.description, "rows": {s: len(t) for s, t in c.splits.items()}} for c in configs],
        "missing_configs": missing_configs,
        "label_table": cards.counter_table(split_labels, list(LABELS)),
        "search_share": search_share,
        "sources": sources,
        "rule_versions": rule_versions,
        "rule_version_code": rule_version_code,
        "metrics": metrics,
        "probe": probe,
        "cache": cache_info,
        "hit_rate": rate,
        "hit_rate_source": rate_source,
        "before": before,
        "after": after,
        "plots": plots,
        "exclusions": [{"stage": k.split("\x1f")[0], "reason": k.split("\x1f")[1], "rows": n} for k, n in sorted(excl_counts.items())],
        "code_revision": cards.git_revision(root),
        "versions": cards.env_summary(),
        "params_yaml": cards.params_yaml(Path(params_file)),
        "limits": cards.known_limits(probe=probe, cache=cache_info, before=before, search_share=search_share),
        "reference": reference_card_summary(metrics),  # agreement with a source's reference label (e.g. FVQA's)
    }
    template = root / p.template
    if not template.exists():  # a relative template path also resolves against the code's own checkout
        template = cards.TEMPLATE_DIR.parent / p.template
    text = cards.render_card(context, template.name, template.parent)
    (tmp / "README.md").write_text(text, encoding="utf-8")

    problems = validate_folder(tmp)
    if p.verify_load and not problems:
        problems = verify_load(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)

    verl_rows = {}
    if p.verl.enabled:
        from pipeline.publish.verl import export_split

        for s, table in configs[0].splits.items():  # the published (scrubbed) default config
            verl_rows[s] = export_split(table, s, root / p.verl.out_dir / f"{s}.parquet", p.verl)
    rows = {c.name: {s: len(t) for s, t in c.splits.items()} for c in configs}
    return BuildResult(folder, files, rows, {s: v.rows_in for s, v in prepared.items()}, own_excluded, cache_stats, problems, verl_rows)


def verify_load(folder: Path) -> list[str]:
    """Load every config of `folder` with `datasets.load_dataset` (throwaway cache) and compare rows with the card."""
    import tempfile

    from huggingface_hub import DatasetCard
    from datasets.info import DatasetInfosDict

    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard((folder / "README.md").read_text(encoding="utf-8")).data)
    problems = []
    with tempfile.TemporaryDirectory(prefix="publish-verify-") as cache:
        for name, info in infos.items():
            try:
                ds = datasets.load_dataset(str(folder), name, cache_dir=cache)
            except Exception as exc:  # any loader failure is a reason not to publish
                problems.append(f"config {name!r}: datasets.load_dataset failed: {type(exc).__name__}: {exc}")
                continue
            for split, split_info in (info.splits or {}).items():
                got = len(ds[split]) if split in ds else None
                if got != split_info.num_examples:
                    problems.append(f"config {name!r} split {split!r}: loaded {got} rows, card says {split_info.num_examples}")
                elif ds[split].features != info.features:
                    problems.append(f"config {name!r} split {split!r}: loaded features differ from the card")
    return problems
