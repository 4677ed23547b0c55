"""Bootstrap the labeler: teach the base model the search protocol on a split that shares no entity with probed items.

Reads:  <items> (data/gather/demo/bootstrap.parquet: items whose entities appear in no probed item); the base model
        (<base_model>: "packaged:smollm2", a folder or a Hub id); the `search:` section of the same params file
        (the real tools, through their cache).
Writes: <out_dir>/model/ (HF model folder the probe loads; when `enabled` is false it holds only model_ref.json
        pointing at the base model), <out_dir>/demos.jsonl (the demonstrations, images as sha1 refs),
        <out_dir>/metrics.json (closed-book known items, demonstrations by kind, training loss, tokens/s, seconds).
Steps: (1) which bootstrap items the base model answers correctly without search (greedy); (2) demonstrations:
answer directly where it knew, else image search -> (text search about the recognised entity) -> the gold answer,
with the real tool results; plus closed-book demonstrations; (3) a short supervised cold start, loss on assistant
tokens only (`pipeline.bootstrap.cold_start`, which the GRPO stage's optional cold start reuses).
Does not support: resuming a killed cold start (it is short; it reruns), the tool_calls protocol (demonstrations
are written in the mmsearch_r1 tags).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from pipeline.bootstrap import ColdStartParams
from pipeline.config import param
from pipeline.rollout.protocols import Limits


@dataclasses.dataclass
class Params:
    enabled: bool = param(True, help="false: no training; model/ points at base_model (a capable VLM on a GPU)")
    items: str = param("data/gather/demo/bootstrap.parquet", help="bootstrap split (no entity shared with probed items)")
    out_dir: str = param("data/bootstrap", help="model/, demos.jsonl and metrics.json are written here")
    base_model: str = param("packaged:smollm2", help="model to teach: packaged:smollm2 | tiny:text | tiny:vlm | folder | Hub id")
    max_items: int = param(0, help="use at most this many bootstrap items (0 = all)")
    conditions: list[str] = param(["tools", "closed_book"], help="conditions demonstrated (the probe's)")
    limits: Limits = param(factory=Limits, help="per-rollout limits (must match probe.limits)")
    search_k: int = param(0, help="results per search call (0 = search.k_image / search.k_text); keep equal to probe.search_k")
    judge_method: str = param("em", help="judge of the closed-book check: em | subem | f1")
    cold_start: ColdStartParams = param(factory=ColdStartParams, help="supervised cold start")


def run(params: Params, args) -> int:
    import datasets

    from pipeline.bootstrap import build_demonstrations, closed_book_known, cold_start
    from pipeline.config import load_section
    from pipeline.io import write_json
    from pipeline.judge import JudgeParams, make_judge
    from pipeline.models import model_info, resolve_model
    from pipeline.rollout.loop import messages_for_evidence
    from pipeline.rollout.protocols import get_protocol
    from pipeline.schema import read_items
    from pipeline.search import SearchParams, SearchTools

    out = Path(params.out_dir)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    if not params.enabled:
        model_dir.mkdir(parents=True)
        (model_dir / "model_ref.json").write_text(json.dumps({"model": params.base_model}) + "\n")
        write_json({"enabled": False, "model": params.base_model}, out / "metrics.json")
        (out / "demos.jsonl").write_text("")
        print(f"bootstrap off: probe uses {params.base_model}")
        return 0
    base = resolve_model(params.base_model)
    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    items = [ds[i] for i in range(len(ds) if not params.max_items else min(params.max_items, len(ds)))]
    protocol = get_protocol("mmsearch_r1", params.limits)
    judge_fn = make_judge(JudgeParams(method=params.judge_method))
    with_image = bool(model_info(base)["is_vlm"])

    known = closed_book_known(base, items, judge_fn)
    tools = SearchTools.from_params(load_section(SearchParams, "search", args.params))
    demos, counts = build_demonstrations(items, protocol, tools, known, with_image=with_image,
                                         conditions=params.conditions, search_k=params.search_k or None)
    print(f"bootstrap: {len(items)} items, base model knew {sum(known.values())}; demonstrations {counts}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "demos.jsonl", "w", encoding="utf-8") as f:
        for d in demos:
            f.write(json.dumps({**d, "messages": messages_for_evidence(d["messages"])}, sort_keys=True) + "\n")
    tmp = out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    stats = cold_start(base, demos, tmp, protocol=protocol, params=params.cold_start)
    tmp.rename(model_dir)
    write_json({"enabled": True, "base_model": params.base_model, "items": len(items),
                "base_closed_book_known": sum(known.values()), "demonstrations": counts,
                "n_demonstrations": len(demos), "cold_start": stats,
                "search": {k: v for k, v in tools.metrics().items() if k in ("calls", "hits", "misses", "errors")}},
               out / "metrics.json")
    print(f"bootstrap: cold start {stats['steps']} steps on {stats['demos_used']} demonstrations in "
          f"{stats['seconds']} s, loss {stats['loss_first']} -> {stats['loss_last']} -> {model_dir}")
    return 0
