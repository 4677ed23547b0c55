"""Evaluate checkpoints by direct answer, the always-search RAG workflow and on-demand search: accuracy and search efficiency.

Reads:  the datasets of evaluate.datasets (default: data/balance/test.parquet, items + `label`; any extra benchmark
        parquet/folder, in item schema or through a gather source with a column mapping); the models of
        evaluate.models (default: base = data/bootstrap/model, trained = data/train/model; a folder holding only
        model_ref.json points at another model spec); the `search:` section of the same params file (data/index,
        the tool cache data/cache/search) for the rag and on_demand modes.
Writes: <out_dir>/rollouts.parquet (every trajectory: ROLLOUT_FEATURES + dataset + label; `condition` = the mode,
        `model` = the model's name; rollout_id = model/mode/dataset/item/sample), <out_dir>/metrics.json (nested
        model -> mode -> dataset -> metric, so `dvc metrics show` prints keys like trained.on_demand.test.search_ratio;
        plus `avg` per model x mode and `vs_rag` per model), <out_dir>/table.md (the paper's Table 1 shape),
        <out_dir>/accuracy_vs_search.png and <out_dir>/plots/accuracy_vs_search_<dataset>.csv (DVC plots),
        <out_dir>/exclusions.parquet (dataset rows that are not valid items, with the reason);
        <parts_dir>/<fingerprint>/<model>__<dataset>__<mode>.parquet while it runs (resume state).
        The shared search cache is only read: evaluation searches go through a private copy (private_cache).
Resumable: each model x dataset x mode is one unit written atomically; a killed run skips finished units. The parts
        folder is keyed by a fingerprint of the model weights, the selected items and every setting that shapes
        the rollouts, so changed inputs never reuse stale parts.
Metric definitions: pipeline/evaluate/metrics.py. Modes: pipeline/evaluate/modes.py.
Does not support: several engines at once (models are evaluated one after the other, one engine each); an LLM
        judge without an OpenAI-compatible endpoint; sharding across machines.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from pipeline.config import param
from pipeline.evaluate.data import DatasetParams
from pipeline.evaluate.modes import MODES, RagParams
from pipeline.judge import JudgeParams
from pipeline.rollout.engines import EngineParams, Sampling
from pipeline.rollout.protocols import Limits

SECTION = "evaluate"


@dataclasses.dataclass
class ModelSpec:
    name: str = param("", help="short name used in metrics keys and the table (letters, digits, _ or -)")
    path: str = param("", help="model folder, 'packaged:smollm2', 'tiny:text', 'tiny:vlm' or a Hub id")


def _default_models() -> list[ModelSpec]:
    return [ModelSpec("base", "data/bootstrap/model"), ModelSpec("trained", "data/train/model")]


@dataclasses.dataclass
class Params:
    models: list[ModelSpec] = param(factory=_default_models, help="checkpoints to evaluate, in table order")
    modes: list[str] = param(list(MODES), help="direct (no tools) | rag (image search, text search, answer) | "
                             "on_demand (the model decides)")
    datasets: dict[str, DatasetParams] = param(
        factory=lambda: {"test": DatasetParams(path="data/balance/test.parquet")},
        help="name -> dataset; the name is the table column and the metrics key")
    max_items: int = param(20, help="items per dataset (0 = all); a seeded choice stratified by label")
    samples: int = param(1, help="rollouts per item and mode (1 with greedy decoding)")
    seed: int = param(0, help="seed of the item choice and of generation")
    protocol: str = param("mmsearch_r1", help="mmsearch_r1 (the paper's tags) | tool_calls (native tool calling)")
    limits: Limits = param(factory=Limits, help="on_demand limits (the paper: 3 turns, 1 image search in turn 1, "
                           "2 text searches); rag always runs 3 turns: 1 image search, 1 text search, the answer")
    with_image: bool = param(True, help="show the image to a vision-language model (a text-only model never sees it)")
    engine: EngineParams = param(factory=EngineParams, help="generation engine")
    sampling: Sampling = param(factory=lambda: Sampling(temperature=0.0, max_tokens=64),
                               help="decoding per turn (default greedy)")
    judge: JudgeParams = param(factory=JudgeParams, help="answer judge: em (with aliases) by default; llm optional")
    rag: RagParams = param(factory=RagParams, help="the fixed RAG workflow")
    cache_mode: str = param("", help="search cache mode for evaluation: '' = the search section's, or live | "
                            "cache_first | replay_only")
    private_cache: bool = param(True, help="search through a copy of the search cache taken at start (sqlite "
                                "backup into parts_dir), so the shared cache, a dependency of this stage, is only "
                                "read; false: read and write the shared cache in place")
    out_dir: str = param("data/evaluate", help="report folder")
    parts_dir: str = param("data/evaluate_parts", help="finished units while a run is in progress (resume state)")

    def validate(self) -> None:
        from pipeline.evaluate.data import NAME_RE

        if not self.models:
            raise ValueError("models: give at least one {name, path}")
        names = [m.name for m in self.models]
        for m in self.models:
            if not NAME_RE.match(m.name) or not m.path:
                raise ValueError(f"models: {m.name!r} needs a name of letters, digits, _ or - and a path")
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes: use distinct values of {list(MODES)}, got {self.modes}")
        if not self.datasets:
            raise ValueError("datasets: give at least one name -> {path}")
        for name in self.datasets:
            if not NAME_RE.match(name) or name in ("avg",):
                raise ValueError(f"datasets: name {name!r} must be letters, digits, _ or - (and not 'avg')")
        if self.samples < 1 or self.max_items < 0:
            raise ValueError("samples must be >= 1 and max_items >= 0")
        if self.cache_mode not in ("", "live", "cache_first", "replay_only"):
            raise ValueError(f"cache_mode {self.cache_mode!r}: use '', live, cache_first or replay_only")


def fingerprint(params: Params, model_digest: str, datasets: dict[str, list[str]], search: dict) -> str:
    """Everything that shapes the rollouts of a run (output locations and the model/dataset lists excluded: a unit
    is found by its own name inside the folder)."""
    from pipeline.schema import sha1_hex, to_json

    keep = dataclasses.asdict(params)
    for k in ("out_dir", "parts_dir", "models", "modes", "datasets", "max_items"):
        keep.pop(k)
    keep["engine"] = {k: keep["engine"][k] for k in ("kind", "dtype", "seed_mode")}
    return sha1_hex(to_json({"params": keep, "model": model_digest, "search": search,
                             "items": {d: sha1_hex("\n".join(ids)) for d, ids in sorted(datasets.items())}}))[:16]


def _search_params(params: Params, params_file: str):
    from pipeline.config import load_section, read_params
    from pipeline.search import SearchParams

    if "search" in read_params(params_file):
        search = load_section(SearchParams, "search", params_file)
    else:
        print(f"evaluate: {params_file} has no `search:` section; using the search defaults (local indexes in "
              "data/index, cache data/cache/search)", file=sys.stderr)
        search = SearchParams()
    if params.cache_mode:
        search = dataclasses.replace(search, cache=dataclasses.replace(search.cache, mode=params.cache_mode))
    return search


def _private_copy(search, parts_dir: str):
    """SearchParams whose cache is a fresh copy of the shared one (empty when there is none).

    A file copy of the database and its write-ahead log, without opening the source: opening it, even read-only,
    would leave -shm/-wal files beside it and change the stage's dependency."""
    import shutil

    src, dst = Path(search.cache.path), Path(parts_dir) / "search_cache.sqlite"
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    if src.exists():
        shutil.copyfile(src, dst)
        if Path(str(src) + "-wal").exists():  # committed pages not yet checkpointed: sqlite replays them on open
            shutil.copyfile(str(src) + "-wal", str(dst) + "-wal")
    return dataclasses.replace(search, cache=dataclasses.replace(search.cache, path=str(dst)))


def _index_state(search) -> dict:
    """Names and sizes of the local index files (a rebuilt index changes search results)."""
    root = Path(search.local.index_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return {str(p.relative_to(root)): p.stat().st_size for p in files}


def _rows_table(rows: list[dict]):
    import datasets

    from pipeline.evaluate.modes import EVAL_ROLLOUT_FEATURES

    if not rows:
        return EVAL_ROLLOUT_FEATURES.arrow_schema.empty_table()
    return datasets.Dataset.from_list(rows, features=EVAL_ROLLOUT_FEATURES).data.table


def run(params: Params, args) -> int:
    import gc
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluate.data import load_dataset, select_items
    from pipeline.evaluate.modes import run_mode
    from pipeline.evaluate.report import render_table, with_summaries, write_plots
    from pipeline.evaluate.metrics import metrics_by_group
    from pipeline.io import progress, write_exclusions, write_json
    from pipeline.models import ModelError, folder_digest
    from pipeline.rollout.engines import derive_seed, make_engine
    from pipeline.rollout.protocols import get_protocol
    from pipeline.schema import write_table
    from stages.probe import resolve_labeler

    out = Path(params.out_dir)
    # ---- datasets
    data, selected, excluded, ds_summary = {}, {}, [], {}
    for name, dp in params.datasets.items():
        try:
            ds = load_dataset(name, dp)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        limit = params.max_items if dp.max_items is None else dp.max_items
        chosen = select_items(ds.items, ds.labels, limit, derive_seed(params.seed, "evaluate", name))
        data[name], selected[name] = ds, chosen
        excluded += ds.excluded
        ds_summary[name] = {"rows": ds.n_rows, "valid_items": len(ds.items), "excluded": len(ds.excluded),
                            "evaluated_items": len(chosen),
                            "labelled_items": sum(1 for it in chosen if ds.labels.get(it["id"]))}
        assert ds.n_rows == len(ds.items) + len(ds.excluded), f"dataset {name}: rows in != items + excluded"
        print(f"evaluate: dataset {name}: {ds.n_rows} rows, {len(ds.items)} items, {len(ds.excluded)} excluded, "
              f"{len(chosen)} evaluated")
    write_exclusions(excluded, out / "exclusions.parquet")

    # ---- models (resolved up front so a missing checkpoint fails before any work)
    paths = {}
    for m in params.models:
        try:
            paths[m.name] = resolve_labeler(m.path)
        except ModelError as exc:
            print(f"error: model {m.name!r}: {exc}", file=sys.stderr)
            return 2

    needs_tools = any(mode != "direct" for mode in params.modes)
    search = _search_params(params, args.params) if needs_tools else None
    search_state = {"params": dataclasses.asdict(search), "index": _index_state(search)} if search else {}
    item_ids = {d: [it["id"] for it in selected[d]] for d in selected}
    units = [(m.name, d, mode) for m in params.models for d in params.datasets for mode in params.modes]
    digests = {name: folder_digest(path) for name, path in paths.items()}
    fps = {name: fingerprint(params, digests[name], item_ids, search_state) for name in paths}
    part = lambda model, d, mode: Path(params.parts_dir) / fps[model] / f"{model}__{d}__{mode}.parquet"  # noqa: E731
    todo = [u for u in units if not part(*u).exists()]
    print(f"evaluate: {len(units)} units (model x dataset x mode), {len(units) - len(todo)} already done")

    tools = None
    if todo and needs_tools:
        from pipeline.search import SearchTools

        tools = SearchTools.from_params(_private_copy(search, params.parts_dir) if params.private_cache else search,
                                        Path("."))
    bar = progress(total=len(units), desc="evaluate", unit="unit", initial=len(units) - len(todo))
    for spec in params.models:
        mine = [u for u in todo if u[0] == spec.name]
        if not mine:
            continue
        (Path(params.parts_dir) / fps[spec.name]).mkdir(parents=True, exist_ok=True)
        protocol = get_protocol(params.protocol, params.limits)
        engine = make_engine(params.engine.kind, paths[spec.name], protocol=protocol, seed=params.seed,
                             params=params.engine)
        for model, d, mode in mine:
            bar.set_postfix_str(f"{model}/{mode}/{d}")
            rows = run_mode(engine, params.protocol, params.limits, tools, selected[d], mode,
                            samples=params.samples, judge_cfg=params.judge, sampling=params.sampling,
                            seed=derive_seed(params.seed, "evaluate", d, mode), model_name=model, dataset=d,
                            labels=data[d].labels, with_image=params.with_image,
                            rag=params.rag)
            write_table(_rows_table(rows), part(model, d, mode))
            bar.update(1)
        engine.close()
        del engine
        gc.collect()
    bar.close()

    # ---- report (from the stored rollouts only)
    table = pa.concat_tables([pq.read_table(part(*u)) for u in units]) if units else _rows_table([])
    write_table(table, out / "rollouts.parquet")
    rows = table.to_pylist()
    labels = {d: data[d].labels for d in data}
    nested = metrics_by_group(rows, labels)
    names, datasets_ = [m.name for m in params.models], list(params.datasets)
    metrics = with_summaries(nested, datasets_)
    metrics_doc = dict(metrics)
    metrics_doc["datasets"] = ds_summary
    write_json(metrics_doc, out / "metrics.json")
    (out / "table.md").write_text(render_table(nested, names, params.modes, datasets_), encoding="utf-8")
    write_plots(nested, names, params.modes, datasets_, out / "plots", out / "accuracy_vs_search.png")
    # Provenance (deterministic: the tool counters of this process depend on what a resumed run re-did, so they
    # are printed, not stored).
    (out / "run.json").write_text(json.dumps({"fingerprints": fps, "models": {m.name: m.path for m in params.models},
                                              "model_digests": digests}, indent=1, sort_keys=True) + "\n")
    if tools is not None:
        t = tools.metrics()
        print(f"evaluate: search tools this run: {t.get('calls')} calls, {t.get('hits')} cache hits, "
              f"{t.get('errors')} errors")
    for fp_dir in Path(params.parts_dir).iterdir() if Path(params.parts_dir).is_dir() else []:
        if fp_dir.is_dir() and fp_dir.name not in fps.values():
            shutil.rmtree(fp_dir, ignore_errors=True)

    for name in names:
        for mode in params.modes:
            cells = ", ".join(
                f"{d}: acc {_fmt(metrics.get(name, {}).get(mode, {}).get(d, {}).get('accuracy'))} "
                f"SR {_fmt(metrics.get(name, {}).get(mode, {}).get(d, {}).get('search_ratio'))}" for d in datasets_)
            print(f"evaluate: {name} {mode}: {cells}")
    print(f"evaluate: {len(rows)} rollouts -> {out / 'rollouts.parquet'}, {out / 'table.md'}, {out / 'metrics.json'}")
    return 0


def _fmt(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"
