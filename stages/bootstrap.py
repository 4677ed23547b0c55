"""Bootstrap the labeler: teach the base model the search protocol on a split that shares no entity with probed items.

Reads:  <items> (data/gather/demo/bootstrap.parquet: items whose entities appear in no probed item); the base model
        (<base_model>: "packaged:smollm2", a folder or a Hub id); the `rollout:` section (protocol, limits, search_k,
        judge) and the `search:` section (the real tools, through their cache) of the same params file.
Writes: <out_dir>/model/ (HF model folder the probe loads; when `enabled` is false it holds only model_ref.json
        pointing at the base model), <out_dir>/demos.jsonl (the demonstrations, images as sha1 refs),
        <out_dir>/metrics.json (closed-book known items, demonstrations by kind, training loss, tokens/s, seconds).
Steps: (1) which bootstrap items the base model answers correctly without search (greedy); (2) demonstrations:
answer directly where it knew, else image search -> (text search about the recognised entity) -> the gold answer,
with the real tool results; plus closed-book demonstrations; (3) a short supervised cold start, loss on assistant
tokens only. The work: trainer/cold_start.py (which the GRPO stage's optional cold start reuses), with
pipeline/bootstrap.py (demonstrations) and trainer/sft.py (the fine-tuning).
Does not support: resuming a killed cold start (it is short; it reruns), the tool_calls protocol (demonstrations
are written in the mmsearch_r1 tags).
"""
from __future__ import annotations

from pathlib import Path

from trainer.cold_start import BootstrapParams

Params = BootstrapParams
SECTION = "bootstrap"


def run(params: BootstrapParams, args) -> int:
    from pipeline.config import load_section
    from pipeline.search import SearchParams, SearchTools
    from trainer.cold_start import bootstrap

    metrics = bootstrap(params, lambda: SearchTools.from_params(load_section(SearchParams, "search", args.params)))
    if not metrics["enabled"]:
        print(f"bootstrap off: probe uses {params.base_model}")
        return 0
    stats = metrics["cold_start"]
    print(f"bootstrap: cold start {stats['steps']} steps on {stats['demos_used']} demonstrations in "
          f"{stats['seconds']} s, loss {stats['loss_first']} -> {stats['loss_last']} -> {Path(params.out_dir) / 'model'}")
    return 0
