"""An evaluation run: every model x dataset x mode played once, resumable, from the stored units to one table.

`evaluate(params, params_file)` loads and selects the datasets (`data.py`), resolves the models, then plays each
model x dataset x mode (`modes.run_mode`) as one unit of a `pipeline.runs.Run` per model, whose parts live under
`<parts_dir>/<fingerprint of that model's run>/<model>__<dataset>__<mode>.parquet`. A killed run skips finished
units; the fingerprint covers the model weights, the selected items, the search settings and index, and every
setting that shapes the rollouts, so changed inputs never reuse stale parts. Searches go through a private copy of
the search cache (`private_cache`), so the shared cache, a dependency of the stage, is only read.

Reads the datasets, the models, the `search:` section of `params_file` (when a mode uses tools) and its indexes and
cache; writes only under `parts_dir`. Returns an `Evaluation`; the report is written by the stage (`report.py`).
"""
from __future__ import annotations

import dataclasses
import gc
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline.config import param
from pipeline.evaluate.data import DatasetParams
from pipeline.evaluate.modes import MODES, RagParams
from pipeline.rollout.config import RolloutParams
from pipeline.rollout.engines import EngineParams, Sampling


class EvaluateError(ValueError):
    """A dataset or model that cannot be used; the message names it and says what to do."""


@dataclasses.dataclass
class ModelSpec:
    name: str = param("", help="short name used in metrics keys and the table (letters, digits, _ or -)")
    path: str = param("", help="model folder, 'packaged:smollm2', 'tiny:text', 'tiny:vlm' or a Hub id")
    modes: list[str] = param(factory=list, help="this model's modes, a subset of evaluate.modes ([] = all of them); e.g. the "
                             "paper's Table 1 plays the RAG workflow with the base model only")


def _default_models() -> list[ModelSpec]:
    return [ModelSpec("base", "data/bootstrap/model"), ModelSpec("trained", "data/train/model")]


@dataclasses.dataclass
class EvaluateParams(RolloutParams):
    """The `evaluate:` section (the rollout settings come from `rollout:`)."""

    models: list[ModelSpec] = param(factory=_default_models, help="checkpoints to evaluate, in table order")
    modes: list[str] = param(list(MODES), help="direct (no tools) | rag (image search, text search, answer) | "
                             "on_demand (the model decides)")
    datasets: dict[str, DatasetParams] = param(
        factory=lambda: {"test": DatasetParams(path="data/balance/test.parquet")},
        help="name -> dataset; the name is the table column and the metrics key")
    max_items: int = param(20, help="items per dataset (0 = all); a seeded choice stratified by label")
    samples: int = param(1, help="rollouts per item and mode (K; 1 with greedy decoding)")
    seed: int = param(0, help="seed of the item choice and of generation")
    with_image: bool = param(True, help="show the image to a vision-language model (a text-only model never sees it)")
    engine: EngineParams = param(factory=EngineParams, help="generation engine")
    sampling: Sampling = param(factory=lambda: Sampling(temperature=0.0, max_tokens=64),
                               help="decoding per turn (default greedy)")
    rag: RagParams = param(factory=RagParams, help="the fixed RAG workflow")
    cache_mode: str = param("", help="search cache mode for evaluation: '' = the search section's, or live | "
                            "cache_first | replay_only")
    private_cache: bool = param(True, help="search through a copy of the search cache taken at start (sqlite "
                                "backup into parts_dir), so the shared cache, a dependency of this stage, is only "
                                "read; false: read and write the shared cache in place")
    transitions: str = param("data/reprobe/transitions.md", help="the reprobe stage's table of label moves, appended "
                             "to table.md ('' = none; a missing file is reported and skipped)")
    out_dir: str = param("data/evaluate", help="report folder")
    parts_dir: str = param("data/evaluate_parts", help="finished units while a run is in progress (resume state)")

    def validate(self) -> None:
        from pipeline.evaluate.data import NAME_RE

        RolloutParams.validate(self)
        if not self.models:
            raise ValueError("models: give at least one {name, path}")
        names = [m.name for m in self.models]
        for m in self.models:
            if not NAME_RE.match(m.name) or not m.path:
                raise ValueError(f"models: {m.name!r} needs a name of letters, digits, _ or - and a path")
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        for m in self.models:
            extra = [x for x in m.modes if x not in self.modes]
            if extra or len(set(m.modes)) != len(m.modes):
                raise ValueError(f"models: {m.name!r} modes {m.modes} must be distinct values of evaluate.modes "
                                 f"{self.modes} ([] = all)")
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

    def modes_of(self, model: ModelSpec) -> list[str]:
        """The modes `model` is played in, in `modes` order."""
        return [x for x in self.modes if not model.modes or x in model.modes]


@dataclasses.dataclass
class Evaluation:
    """The stored rollouts of every unit and what the report needs besides them."""

    rollouts: Any  # pyarrow.Table, EVAL_ROLLOUT_FEATURES, units in model x dataset x mode order
    labels: dict[str, dict[str, str | None]]  # dataset -> item id -> label
    datasets: dict[str, dict]  # dataset -> rows, valid_items, excluded, evaluated_items, labelled_items
    excluded: list[dict]  # exclusion rows of dataset rows that are not valid items
    fingerprints: dict[str, str]  # model -> fingerprint of its parts
    digests: dict[str, str]  # model -> digest of its files
    tool_metrics: dict | None  # search tool counters of this process (None: no tools ran)
    needs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # dataset -> item id -> answer key


def fingerprint(params: EvaluateParams, model_digest: str, datasets: dict[str, list[str]], search: dict) -> str:
    """Everything that shapes the rollouts of one model's units (output locations and the model/dataset lists
    excluded: a unit is found by its own name inside the folder)."""
    from pipeline.runs import fingerprint as fp

    keep = dataclasses.asdict(params)
    for k in ("out_dir", "parts_dir", "models", "modes", "datasets", "max_items", "transitions"):
        keep.pop(k)
    keep["engine"] = {k: keep["engine"][k] for k in ("kind", "dtype", "seed_mode")}
    return fp({"params": keep, "model": model_digest, "search": search,
               "items": {d: fp(ids) for d, ids in sorted(datasets.items())}})


def search_params(params: EvaluateParams, params_file: str, log: Callable[[str], None] = print):
    """The `search:` section of `params_file` (defaults when it has none), with `cache_mode` applied."""
    from pipeline.config import load_section, read_params
    from pipeline.search import SearchParams

    if "search" in read_params(params_file):
        search = load_section(SearchParams, "search", params_file)
    else:
        log(f"evaluate: {params_file} has no `search:` section; using the search defaults (local indexes in "
            "data/index, cache data/cache/search)")
        search = SearchParams()
    if params.cache_mode:
        search = dataclasses.replace(search, cache=dataclasses.replace(search.cache, mode=params.cache_mode))
    return search


def index_state(search) -> dict:
    """Names and sizes of the local index files (a rebuilt index changes search results)."""
    root = Path(search.local.index_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return {str(p.relative_to(root)): p.stat().st_size for p in files}


def rows_table(rows: list[dict]):
    import datasets

    from pipeline.evaluate.modes import EVAL_ROLLOUT_FEATURES

    if not rows:
        return EVAL_ROLLOUT_FEATURES.arrow_schema.empty_table()
    return datasets.Dataset.from_list(rows, features=EVAL_ROLLOUT_FEATURES).data.table


def evaluate(params: EvaluateParams, params_file: str, log: Callable[[str], None] = print) -> Evaluation:
    """Play every unit not stored yet and return the stored rollouts of all of them (see the module docstring)."""
    import pyarrow as pa

    from pipeline.curate.answer_key import expected_need
    from pipeline.evaluate.data import load_dataset
    from pipeline.evaluate.modes import EVAL_ROLLOUT_FEATURES, run_mode
    from pipeline.io import progress
    from pipeline.models import ModelError, resolve_model
    from pipeline.rollout.engines import derive_seed, make_engine
    from pipeline.subsets import stratified_subset
    from pipeline.runs import Run, clear_stale, path_digest
    from pipeline.search.cache import private_copy

    data, selected, excluded, summary = {}, {}, [], {}
    for name, dp in params.datasets.items():
        try:
            ds = load_dataset(name, dp)
        except (FileNotFoundError, ValueError) as exc:
            raise EvaluateError(str(exc)) from None
        limit = params.max_items if dp.max_items is None else dp.max_items
        chosen = stratified_subset(ds.items, ds.labels, limit, derive_seed(params.seed, "evaluate", name))
        data[name], selected[name] = ds, chosen
        excluded += ds.excluded
        summary[name] = {"rows": ds.n_rows, "valid_items": len(ds.items), "excluded": len(ds.excluded),
                         "evaluated_items": len(chosen),
                         "labelled_items": sum(1 for it in chosen if ds.labels.get(it["id"]))}
        assert ds.n_rows == len(ds.items) + len(ds.excluded), f"dataset {name}: rows in != items + excluded"
        log(f"evaluate: dataset {name}: {ds.n_rows} rows, {len(ds.items)} items, {len(ds.excluded)} excluded, "
            f"{len(chosen)} evaluated")
    paths = {}
    for m in params.models:  # resolved up front, so a missing checkpoint fails before any work
        try:
            paths[m.name] = resolve_model(m.path)
        except ModelError as exc:
            raise EvaluateError(f"model {m.name!r}: {exc}") from None

    needs_tools = any(mode != "direct" for m in params.models for mode in params.modes_of(m))
    search = search_params(params, params_file, lambda s: print(s, file=sys.stderr)) if needs_tools else None
    search_state = {"params": dataclasses.asdict(search), "index": index_state(search)} if search else {}
    item_ids = {d: [it["id"] for it in selected[d]] for d in selected}
    digests = {name: path_digest(path) for name, path in paths.items()}
    fps = {name: fingerprint(params, digests[name], item_ids, search_state) for name in paths}
    runs = {m.name: Run(params.parts_dir, fps[m.name], [(m.name, d, mode) for d in params.datasets
                                                        for mode in params.modes_of(m)], name="__".join)
            for m in params.models}
    n_units, n_todo = sum(len(r.units) for r in runs.values()), sum(len(r.todo()) for r in runs.values())
    log(f"evaluate: {n_units} units (model x dataset x mode), {n_units - n_todo} already done")

    tools = None
    if n_todo and needs_tools:
        from pipeline.search import SearchTools

        tools = SearchTools.from_params(private_copy(search, params.parts_dir) if params.private_cache else search,
                                        Path("."))
    bar = progress(total=n_units, desc="evaluate", unit="unit", initial=n_units - n_todo)
    for spec in params.models:
        run = runs[spec.name].start({"model": spec.path})
        if not run.todo():
            continue
        engine = make_engine(params.engine.kind, paths[spec.name], protocol=params.make_protocol(), seed=params.seed,
                             params=params.engine)

        def produce(unit: tuple[str, str, str]):
            model, d, mode = unit
            bar.set_postfix_str(f"{model}/{mode}/{d}")
            return rows_table(run_mode(engine, params.protocol, params.limits, tools, selected[d], mode,
                                       samples=params.samples, judge_cfg=params.judge, sampling=params.sampling,
                                       seed=derive_seed(params.seed, "evaluate", d, mode), model_name=model,
                                       dataset=d, labels=data[d].labels, with_image=params.with_image,
                                       rag=params.rag, format_rule=params.format_rule,
                                       prompt=params.prompt))

        run.execute(produce, on_unit=lambda _u, _t: bar.update(1))
        engine.close()
        del engine
        gc.collect()
    bar.close()

    tables = [runs[m.name].merge(schema=EVAL_ROLLOUT_FEATURES.arrow_schema) for m in params.models]
    clear_stale(params.parts_dir, set(fps.values()))
    needs = {d: {it["id"]: need for it in selected[d] if (need := expected_need(it.get("meta")))} for d in selected}
    return Evaluation(pa.concat_tables(tables), {d: data[d].labels for d in data}, summary, excluded, fps, digests,
                      tools.metrics() if tools is not None else None, needs)
