"""Re-probe the test split with the trained policy: which items moved between search_free and search-required.

Reads:  <items> (data/balance/test.parquet: item columns + the split's `label_column`); the policy <model>
        (data/train/model); the `probe:` section (cascade, samples, adaptive rounds, engine, sampling: the re-probe
        runs exactly the probe the labels came from, only the model and the items differ), the `rollout:`,
        `label_rule:` and `search:` sections. The search cache is only read: searches go through a private copy
        in <parts_dir> (as the evaluate stage's). With the blind-guess guard, the probe's items (probe.items,
        data/dedup/items.parquet) are the population whose question texts are compared, as when the labels were made.
Writes: <out_dir>/<condition>/evidence.parquet (every rollout, as the probe stage writes it);
        <out_dir>/labels.parquet (id, before, after, moved: across = search_free <-> search-required, kind = another
        kind of search, out = unanswerable/uncertain, same); <out_dir>/metrics.json (the transitions of
        pipeline/curate/transitions.py: moves across the boundary, the before x after matrix, plus the re-probe's
        label counts and its accuracy against the demo world's answer key); <out_dir>/transitions.md (the table the
        evaluate stage appends to its report); <parts_dir>/<fingerprint>/ while it runs (resumable, as probe).
Run:    python -m stages reprobe [model=data/train/model] [max_items=N]
Does not support: sharding or worker processes (the test split is small; use the probe stage's options for more).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import param


@dataclasses.dataclass
class Params:
    """The `reprobe:` section; every probing setting comes from the `probe:` section."""

    items: str = param("data/balance/test.parquet", help="items to re-probe (item columns + `label_column`)")
    label_column: str = param("label", help="the items' current label (one of the four kept labels)")
    model: str = param("data/train/model", help="the policy that re-probes (a model folder or model spec)")
    max_items: int = param(0, help="re-probe at most this many items (0 = all); a seeded choice spread over the file")
    out_dir: str = param("data/reprobe", help="evidence, labels, transitions and metrics are written here")
    parts_dir: str = param("data/reprobe_parts", help="finished batches while a run is in progress (resume state)")

    def validate(self) -> None:
        if self.max_items < 0:
            raise ValueError("max_items must be >= 0")


def run(params: Params, args) -> int:
    import datasets
    import pyarrow.parquet as pq

    from pipeline.config import load_section
    from pipeline.curate.label import blind_ambiguous
    from pipeline.curate.labelling import EVIDENCE_COLUMNS, LABEL_ITEM_COLUMNS, label_evidence
    from pipeline.curate.transitions import MISSING, move, render_transitions, transitions
    from pipeline.io import write_json
    from pipeline.probe import ProbeParams, probe
    from pipeline.schema import read_items, write_table
    from pipeline.search import SearchParams, SearchTools
    from pipeline.search.cache import private_copy

    table = pq.read_table(params.items)
    if params.label_column not in table.column_names:
        print(f"error: {params.items} has no column {params.label_column!r} (reprobe.label_column); give the split "
              "the balance stage wrote, or name its label column")
        return 2
    section = load_section(ProbeParams, "probe", args.params)
    if section.blind_guesses and not Path(section.items).exists():
        print(f"error: the blind-guess guard (label_rule.blind_guesses) compares question texts over the probe's items, "
              f"and probe.items ({section.items}) does not exist; run the dedup stage, point probe.items at the file "
              "the labels were made from, or set label_rule.blind_guesses: false")
        return 2
    # the guard compares question texts over the population the labels were made on, not the test split alone
    population = read_items(section.items) if section.blind_guesses else None
    ambiguous = blind_ambiguous({c: population[c] for c in LABEL_ITEM_COLUMNS}) if population is not None else set()
    probing = dataclasses.replace(section, items=params.items,
                                  model=params.model, max_items=params.max_items, out_dir=params.out_dir,
                                  parts_dir=params.parts_dir, workers=1)
    # Searches go through a private copy of the cache: the shared one is a dependency of train and publish, which
    # ran before this stage, so writing it would make them stale.
    search = private_copy(load_section(SearchParams, "search", args.params), params.parts_dir)
    result = probe(probing, lambda: SearchTools.from_params(search), ambiguous=ambiguous)
    out = Path(params.out_dir)
    for condition, evidence in result.evidence.items():
        write_table(evidence, out / condition / "evidence.parquet")

    items = read_items(params.items)
    rows = [r for t in result.evidence.values() for r in t.select(EVIDENCE_COLUMNS).to_pylist()]
    labelled = label_evidence({c: items[c] for c in LABEL_ITEM_COLUMNS}, rows, probing, probing.conditions, ambiguous)
    after = {lab["id"]: lab["label"] for lab in labelled["labels"]}
    after.update({x["id"]: x["reason"] for x in labelled["excluded"] if x["reason"] != "not_probed"})
    ids = table.column("id").to_pylist()
    chosen = {r["item_id"] for r in rows} if params.max_items else set(ids)
    before = {i: lab for i, lab in zip(ids, table.column(params.label_column).to_pylist()) if i in chosen}
    moves = transitions(before, after)

    per_item = [{"id": i, "before": b, "after": after.get(i, MISSING), "moved": move(b, after.get(i, MISSING))}
                for i, b in before.items()]
    features = datasets.Features({k: datasets.Value("string") for k in ("id", "before", "after", "moved")})
    write_table(datasets.Dataset.from_list(per_item, features=features).data.table if per_item else
                features.arrow_schema.empty_table(), out / "labels.parquet")
    metrics = {**moves, "model": params.model, "relabel": labelled["metrics"],
               "rollouts": result.metrics["rollouts"], "per_condition_rollouts":
               {c: m["rollouts"] for c, m in result.metrics["per_condition"].items()}}
    write_json(metrics, out / "metrics.json")
    (out / "transitions.md").write_text(render_transitions(moves), encoding="utf-8")
    print(f"reprobe: {moves['items']} items re-probed with {params.model} ({metrics['rollouts']} rollouts): "
          f"{moves['required_to_search_free']} search-required -> search_free, {moves['search_free_to_required']} "
          f"search_free -> search-required, {moves['same_label']} same label, {moves['fell_out']} unanswerable or "
          f"uncertain -> {out}")
    return 0
