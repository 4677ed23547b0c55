"""A Hugging Face dataset: by Hub name, config, split and revision (online), or a local folder (offline).

Reads `params.name` through `datasets.load_dataset(name, config, split=..., revision=..., streaming=True)` when the
Hub is reachable (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): rows arrive batch by batch, nothing is downloaded
whole first. Offline, a Hub dataset already in the local cache is read from it (memory-mapped Arrow). `params.path`:
a `save_to_disk` folder (`load_from_disk`, memory-mapped) or a folder of data files (`load_dataset(path,
streaming=True)`). `streaming: false` reads Hub and data-folder sources the old way (converted to Arrow first).
Image columns are read as encoded bytes (`decode=False`), so normalisation sees the original file. Writes only the
`datasets` cache. Does not support: gated datasets without HF_TOKEN in the environment.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

from pipeline.gather.base import SourceParams, map_record


def load_hf(params: SourceParams):
    import datasets

    if params.path:
        path = Path(params.path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; set gather.sources.<name>.path to a dataset folder")
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path), params.config or None, streaming=params.streaming)
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            # load_dataset still works offline when the dataset is in the local cache; say what to do if it is not.
            try:
                return _split(datasets.load_dataset(params.name, params.config or None, split=params.split,
                                                    revision=params.revision or None), params)
            except Exception as exc:
                raise RuntimeError(
                    f"hf source {params.name!r}: not available offline ({type(exc).__name__}: {exc}); unset "
                    "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE to download it, or point `path` at a local copy"
                ) from None
        ds = datasets.load_dataset(params.name, params.config or None, split=params.split,
                                   revision=params.revision or None, streaming=params.streaming)
    return _split(ds, params)


def _split(ds, params: SourceParams):
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if params.split not in ds:
            raise KeyError(f"hf source: split {params.split!r} not found; available: {', '.join(ds)}")
        ds = ds[params.split]
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def read_hf(params: SourceParams) -> Iterator[dict]:
    """Yield raw rows of the dataset split in order, one at a time, applying the column mapping; keys are
    "<split>:<row index>"."""
    ds = load_hf(params)
    rows = iter(ds) if not params.limit else itertools.islice(iter(ds), params.limit)
    base = Path(params.path) if params.path else None
    for i, rec in enumerate(rows):
        yield map_record(rec, params, f"{params.split}:{i}", base_dir=base)
