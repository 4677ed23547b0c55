"""The labeler's cold start: what the base model knows, demonstrations with the real tools, supervised fine-tuning.

Used by the bootstrap stage and by the train stage's optional cold start (`train.cold_start`), so both teach the
protocol with the same code and the `bootstrap:` settings:
- `BootstrapParams`: the `bootstrap:` section (the rollout settings come from `rollout:`).
- `bootstrap(params, make_tools)`: (1) which items the base model answers without search (greedy); (2)
  demonstrations (pipeline/bootstrap.py); (3) the supervised cold start (trainer/sft.py). Writes
  <out_dir>/model/ (an HF folder; when `enabled` is false it holds only model_ref.json pointing at the base model),
  <out_dir>/demos.jsonl (images as sha1 refs) and <out_dir>/metrics.json; returns the metrics.
- `cold_start_policy(train_params, boot, make_tools)`: the same on `train.model`, under <output_dir>/cold_start,
  run by the main process while the others wait; returns the cold-started model folder.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from pipeline.config import param
from pipeline.rollout.config import RolloutParams
from trainer.sft import ColdStartParams


@dataclasses.dataclass
class BootstrapParams(RolloutParams):
    """The `bootstrap:` section (the rollout settings come from `rollout:`)."""

    enabled: bool = param(True, help="false: no training; model/ points at base_model (a capable VLM on a GPU)")
    items: str = param("data/gather/demo/bootstrap.parquet", help="bootstrap split (no entity shared with probed items)")
    out_dir: str = param("data/bootstrap", help="model/, demos.jsonl and metrics.json are written here")
    base_model: str = param("packaged:smollm2", help="model to teach: packaged:smollm2 | tiny:text | tiny:vlm | folder | Hub id")
    max_items: int = param(0, help="use at most this many bootstrap items (0 = all)")
    conditions: list[str] = param(["tools", "closed_book"], help="conditions demonstrated (the probe's)")
    cold_start: ColdStartParams = param(factory=ColdStartParams, help="supervised cold start")

    def validate(self) -> None:
        RolloutParams.validate(self)
        if self.enabled and self.protocol != "mmsearch_r1":
            raise ValueError("the demonstrations are written in the mmsearch_r1 tags: set rollout.protocol (or "
                             "bootstrap.protocol) to mmsearch_r1, or bootstrap.enabled to false")


def bootstrap(params: BootstrapParams, make_tools: Callable[[], Any], log: Callable[[str], None] | None = print) -> dict:
    """Teach `params.base_model` the protocol (or point at it when disabled); see the module docstring. `log`:
    progress lines (None: quiet)."""
    import datasets

    from pipeline.bootstrap import build_demonstrations, closed_book_known
    from pipeline.io import write_json
    from pipeline.judge import make_judge
    from pipeline.models import model_info, resolve_model, write_model_ref
    from pipeline.rollout.loop import messages_for_evidence
    from pipeline.schema import read_items
    from trainer.sft import cold_start

    out = Path(params.out_dir)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    if not params.enabled:
        write_model_ref(model_dir, params.base_model)
        metrics = {"enabled": False, "model": params.base_model}
        write_json(metrics, out / "metrics.json")
        (out / "demos.jsonl").write_text("")
        return metrics
    base = resolve_model(params.base_model)
    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    items = [ds[i] for i in range(len(ds) if not params.max_items else min(params.max_items, len(ds)))]
    protocol = params.make_protocol()
    with_image = bool(model_info(base)["is_vlm"])

    known = closed_book_known(base, items, make_judge(params.judge))
    tools = make_tools()
    demos, counts = build_demonstrations(items, protocol, tools, known, with_image=with_image,
                                         conditions=params.conditions, search_k=params.search_k or None)
    if log:
        log(f"bootstrap: {len(items)} items, base model knew {sum(known.values())}; demonstrations {counts}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "demos.jsonl", "w", encoding="utf-8") as f:
        for d in demos:
            f.write(json.dumps({**d, "messages": messages_for_evidence(d["messages"])}, sort_keys=True) + "\n")
    tmp = out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    stats = cold_start(base, demos, tmp, protocol=protocol, params=params.cold_start, log=log)
    tmp.rename(model_dir)
    metrics = {"enabled": True, "base_model": params.base_model, "items": len(items),
               "base_closed_book_known": sum(known.values()), "demonstrations": counts,
               "n_demonstrations": len(demos), "cold_start": stats,
               "search": {k: v for k, v in tools.metrics().items() if k in ("calls", "hits", "misses", "errors")}}
    write_json(metrics, out / "metrics.json")
    return metrics


def cold_start_policy(train_params: Any, boot: BootstrapParams, make_tools: Callable[[], Any]) -> str:
    """`bootstrap` run on `train_params.model` with the training's rollout settings, output under
    <output_dir>/cold_start. With several processes the main one trains and the others wait, then all load its
    output. Returns the cold-started model folder."""
    from accelerate import PartialState

    from trainer.config import no_gpu

    out = Path(train_params.output_dir) / "cold_start"
    rollout = {f.name: getattr(train_params, f.name) for f in dataclasses.fields(RolloutParams)}
    boot = dataclasses.replace(boot, enabled=True, base_model=train_params.model, out_dir=str(out), **rollout)
    boot.validate()
    state = PartialState(cpu=no_gpu())
    with state.main_process_first():
        if state.is_main_process:
            bootstrap(boot, make_tools)
    return str(out / "model")
