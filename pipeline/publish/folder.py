"""Write the Hugging Face dataset folder with `datasets`: one DatasetDict per config, its parquet shards, the plots.

Reads:  the tables of every config (made by `pipeline.publish.inputs`), plot PNGs (globs relative to the root).
Writes: `<folder>/data/<config>/<split>-0000i-of-0000n.parquet`: each split is a `datasets.Dataset` with explicit
        Features, cut into contiguous shards with `Dataset.shard` and written with `Dataset.to_parquet`, the way
        `Dataset.push_to_hub` writes its shards (image files embedded and local image paths cut to file names by
        `datasets.table.embed_table_storage`, the features in the schema metadata, datasets' own per-column parquet
        options: media uncompressed and plain-encoded for content-defined chunking, the rest snappy);
        `<folder>/plots/*.png`.
        The README card is written by `pipeline.publish.card` from `metadata_configs` and `dataset_infos` here.

Configs: `default` (the splits; label as ClassLabel over `pipeline.schema.LABELS`, image as Image, aliases as a
list), `probe_evidence`, `search_cache` and `exclusions` (one `train` split each). The folder layout (a config per
folder under data/) is what the card's `configs:` globs point at, so `datasets.load_dataset(folder, config)` and the
Hub's viewer read it without a loading script.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import datasets
import pyarrow as pa
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import embed_table_storage
from datasets.utils.metadata import MetadataConfigs

from pipeline.publish.inputs import PublishError, expand

DEFAULT_CONFIG = "default"
EXTRA_SPLIT = "train"  # the one split of the extra configs (the Hub's convention for single-split data)


@dataclasses.dataclass
class ConfigData:
    """One config: its splits as a DatasetDict, plus the line the card says about it."""

    name: str
    dataset: datasets.DatasetDict
    description: str = ""

    @property
    def rows(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.dataset.items()}

    def table(self, split: str) -> pa.Table:
        """The split's rows as an Arrow table (no copy)."""
        return self.dataset[split].data.table


def to_dataset(table: pa.Table, split: str, features: datasets.Features | None = None) -> datasets.Dataset:
    """`table` as a `datasets.Dataset` with `features` (default: read from the table's schema).

    Image (and other media) columns go through `embed_table_storage` as in `push_to_hub`: a local file without bytes
    is read in, and a local path keeps only its file name, so no directory of this machine is published. Remote URLs
    are left as they are (nothing is downloaded)."""
    features = features or datasets.Features.from_arrow_schema(table.schema)
    table = embed_table_storage(table.cast(features.arrow_schema), local_files=True, remote_files=False)
    # A random fingerprint: the default one pickles and hashes the whole table (image bytes included), and nothing
    # here is cached by fingerprint; it is not written into the shards.
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), split=datasets.NamedSplit(split),
                            fingerprint=generate_random_fingerprint())


def make_config(name: str, tables: Mapping[str, pa.Table], description: str = "",
                features: datasets.Features | None = None) -> ConfigData:
    """A config from {split: table}; every split gets the same `features` (default: the first table's)."""
    features = features or datasets.Features.from_arrow_schema(next(iter(tables.values())).schema)
    splits = {}
    for split, table in tables.items():
        try:
            splits[split] = to_dataset(table, split, features)
        except OSError as exc:  # an image given by a local path only, and the file cannot be read
            raise PublishError(f"config {name!r} split {split!r}: an image file cannot be read ({exc}); re-run the "
                               "stage that wrote it so the image bytes are stored in the table") from None
    return ConfigData(name, datasets.DatasetDict(splits), description)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets' own progress bars off (one per shard would flood the log); restored afterwards."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def shard_paths(config: str, split: str, n: int) -> list[str]:
    return [f"data/{config}/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def write_split(ds: datasets.Dataset, folder: Path, config: str, split: str, shard_rows: int) -> list[str]:
    """Write `ds` as ceil(rows / shard_rows) contiguous parquet shards (at least one); returns their folder-relative
    paths."""
    n = max(1, math.ceil(len(ds) / max(1, shard_rows)))
    rel = shard_paths(config, split, n)
    for i, r in enumerate(rel):
        (folder / r).parent.mkdir(parents=True, exist_ok=True)
        ds.shard(num_shards=n, index=i, contiguous=True).to_parquet(str(folder / r))
    return rel


def write_configs(configs: Iterable[ConfigData], folder: Path, shard_rows: int) -> dict[str, dict[str, list[str]]]:
    """Write every config's splits as shards under `folder/data/`; returns {config: {split: [paths]}}."""
    from pipeline.io import progress

    files: dict[str, dict[str, list[str]]] = {}
    jobs = [(c, s, ds) for c in configs for s, ds in c.dataset.items()]
    with quiet_datasets():
        for cfg, split, ds in progress(jobs, desc="publish: shards", unit="split"):
            files.setdefault(cfg.name, {})[split] = write_split(ds, folder, cfg.name, split, shard_rows)
    return files


def dataset_infos(configs: Iterable[ConfigData], folder: Path,
                  files: Mapping[str, Mapping[str, list[str]]]) -> datasets.info.DatasetInfosDict:
    """`dataset_info` of every config as `push_to_hub` records it: features, rows and Arrow bytes per split, parquet
    bytes on disk (download_size)."""
    infos = {}
    for cfg in configs:
        splits = datasets.SplitDict()
        for split, ds in cfg.dataset.items():
            splits.add(datasets.SplitInfo(name=split, num_bytes=int(ds.data.nbytes), num_examples=len(ds)))
        download = sum((folder / f).stat().st_size for paths in files[cfg.name].values() for f in paths)
        dataset_size = sum(int(ds.data.nbytes) for ds in cfg.dataset.values())
        features = next(iter(cfg.dataset.values())).features
        infos[cfg.name] = datasets.DatasetInfo(config_name=cfg.name, features=features, splits=splits,
                                               download_size=download, dataset_size=dataset_size,
                                               size_in_bytes=download + dataset_size)
    return datasets.info.DatasetInfosDict(infos)


def metadata_configs(files: Mapping[str, Mapping[str, list[str]]]) -> MetadataConfigs:
    """The card's `configs:` (datasets' MetadataConfigs): a glob of shards per split, `default` marked default."""
    configs = {}
    for name in files:
        entry: dict = {"data_files": [{"split": s, "path": f"data/{name}/{s}-*.parquet"} for s in files[name]]}
        if name == DEFAULT_CONFIG:
            entry["default"] = True
        configs[name] = entry
    return MetadataConfigs(configs)


def copy_plots(patterns: list[str], root: Path, folder: Path) -> list[dict]:
    """Copy the PNGs matching `patterns` to `folder/plots/` (a second file of the same name gets its stage folder as
    prefix); returns [{"path", "title"}] for the card."""
    out = []
    for src in expand(patterns, root):
        if src.suffix.lower() != ".png":
            continue
        dest = folder / "plots" / src.name
        if dest.exists():
            dest = folder / "plots" / f"{src.parent.name}-{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        out.append({"path": dest.relative_to(folder).as_posix(), "title": src.stem.replace("_", " ")})
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path) -> list[dict]:
    """Every file of the folder (sorted, POSIX relative paths) with size and sha256: what a push uploads."""
    rows = []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            rows.append({"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)})
    return rows
