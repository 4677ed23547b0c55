"""`TrainParams`: the `train:` section of params.yaml, and its mapping onto TRL's `GRPOConfig` and peft's `LoraConfig`.

The rollout settings (protocol, limits, search_k, judge) come from the shared `rollout:` section, as in every
stage that plays rollouts. K, the rollouts per prompt, is `samples` here as in probe and evaluate and maps
onto `GRPOConfig.num_generations` (`train.num_generations` is rejected with a message naming `samples`).
Reads/writes nothing. Unknown keys are rejected by `pipeline.config.build` (with the closest valid name); GRPOConfig
fields that are not first-class parameters can still be set through `grpo_overrides`, whose keys are checked against
GRPOConfig's own fields (those mapped from this section cannot be set there).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pipeline.config import param
from pipeline.rollout.config import RolloutParams
from trainer.rewards import EFFICIENCY, RewardParams


@dataclasses.dataclass
class LoraParams:
    """LoRA adapters through peft (off: full fine-tuning)."""

    enabled: bool = param(False, "train LoRA adapters instead of all weights (merged into the final model)")
    r: int = param(16, "LoRA rank")
    alpha: int = param(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = param(0.05, "dropout on the LoRA input")
    target_modules: list[str] = param(["all-linear"], "modules to adapt: ['all-linear'] or names like [q_proj, v_proj]")

    def to_peft(self):
        from peft import LoraConfig

        targets: Any = self.target_modules[0] if self.target_modules == ["all-linear"] else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets, task_type="CAUSAL_LM")


@dataclasses.dataclass
class TrainParams(RolloutParams, RewardParams):
    """GRPO training of the search policy (the `train:` section). The reward settings (`RewardParams`:
    reward_functions, reward_weights, format_weight, search_penalty, penalty_per_call, efficiency, efficiency_weight,
    format_rule) are fields of this section too; the rollout settings (protocol, limits, search_k, judge) come from the
    shared `rollout:` section (`RolloutParams`), like the probe's, so training plays what the labels measured."""

    RENAMED: ClassVar[dict[str, str]] = {"num_generations": "samples"}

    # --- model and start point ---
    model: str = param(
        "data/bootstrap/model",
        "policy to train: a local HF folder (default: the bootstrap stage's output), 'packaged:smollm2', 'tiny:text', "
        "'tiny:vlm', or a Hub id (online only)",
    )
    cold_start: bool = param(
        False,
        "run the bootstrap stage's demonstrations and supervised cold start (trainer/cold_start.py, settings from "
        "the params file's `bootstrap:` section) on `model` before GRPO; for a base model that does not know the "
        "protocol yet",
    )
    cold_start_overrides: dict[str, Any] = param(
        {}, "keys of the `bootstrap:` section that differ for this cold start only (checked), e.g. {over_search: 1.0}: "
        "a policy start that searches what it knows, so the search penalty has something to remove (the claim "
        "experiment); the cold start is kept under <output_dir>/cold_start and reused by runs with the same settings")
    condition: Literal["tools", "image_only", "text_only"] = param(
        "tools", "tools offered during training: both searches, image search only, or text search only"
    )
    show_image: Optional[bool] = param(
        None, "put the item image in the prompt (null = yes for a vision-language model, no for a text-only model)"
    )
    cache_mode: Literal["live", "cache_first", "replay_only"] = param(
        "cache_first",
        "search cache mode during training (tools come from the params file's `search:` section): cache_first (local "
        "backends stay offline and deterministic; new searches go to a copy of the cache under output_dir, the "
        "shared cache is only read); replay_only never calls a backend, so every query the probe did "
        "not make is a tool error the policy sees (with it, every tool call of the demo's GRPO failed and the policy "
        "learnt to stop searching)",
    )
    # --- data ---
    train_file: str = param("data/balance/train.parquet", "training items (item columns + label)")
    data: Literal["balanced", "unbalanced"] = param(
        "balanced",
        "which training items: balanced = train_file (the search-balanced split); unbalanced = unbalanced_file (the "
        "ablation: the same train clusters before the balance quotas; validation and test unchanged)",
    )
    unbalanced_file: str = param(
        "data/balance/train_unbalanced.parquet",
        "training items when data is unbalanced (the balance stage writes it next to train.parquet)",
    )
    eval_file: str = param("", "evaluation items ('' = no evaluation during training)")
    max_items: int = param(0, "use at most this many training items: a seeded subset with the file's mix of subset_strata (0 = all)")
    subset_strata: list[str] = param(
        ["label", "category"],
        "columns whose value combinations the max_items subset keeps in the file's proportions (label x category: every "
        "seed trains on the same mix of question kinds; [label] alone left one seed 6 known capitals of 20 search-free "
        "items against 10 at others, bench/RESULTS.md); [] = a plain seeded subset",
    )
    max_prompt_length: int = param(1024, "items whose rendered prompt is longer (tokens) are excluded with a reason")
    # --- output ---
    output_dir: str = param("data/train", "checkpoints under <output_dir>/checkpoints, final model in <output_dir>/model")
    resume: str = param(
        "latest",
        "'latest' resumes from the newest checkpoint made with the same settings (a killed run continues), 'never' "
        "starts over, or a checkpoint folder path",
    )
    # --- GRPO ---
    samples: int = param(4, "rollouts per prompt (K, the GRPO group size G; GRPOConfig.num_generations)")
    per_device_train_batch_size: int = param(4, "completions per device per optimizer micro-step (multiple of samples / processes)")
    gradient_accumulation_steps: int = param(1, "micro-steps per optimizer step")
    learning_rate: float = param(1e-6, "AdamW learning rate")
    lr_scheduler_type: str = param("constant", "transformers scheduler name (constant, linear, cosine, ...)")
    warmup_steps: int = param(0, "linear warm-up steps")
    beta: float = param(0.001, "KL coefficient against the reference policy (0 = no reference model)")
    epsilon: float = param(0.2, "PPO-style clip range of the importance ratio")
    loss_type: str = param("dapo", "GRPO loss normalisation: grpo, dapo, dr_grpo, bnpo, ... (TRL loss_type)")
    scale_rewards: Literal["group", "batch", "none"] = param(
        "group", "advantage scaling (GRPOConfig.scale_rewards): group = divide by the group's reward std (GRPO; a "
        "group that differs only by the search penalty gets advantages of +-1, as large as right vs wrong), batch = "
        "by the batch's std, none = reward minus the group mean (Dr. GRPO: the penalty stays 0.1 of a right answer)")
    temperature: float = param(1.0, "sampling temperature of the rollouts")
    top_p: float = param(1.0, "nucleus sampling of the rollouts")
    max_completion_length: int = param(512, "tokens per rollout over all its turns, tool results included")
    max_steps: int = param(20, "optimizer steps (overrides num_train_epochs when > 0)")
    num_train_epochs: float = param(1.0, "epochs over the training items when max_steps is 0")
    save_steps: int = param(10, "save a checkpoint every N steps")
    save_total_limit: int = param(2, "keep at most N checkpoints")
    eval_steps: int = param(0, "evaluate every N steps on eval_file (0 = never)")
    logging_steps: int = param(1, "log (and write the curves) every N steps")
    seed: int = param(0, "seed of sampling, data order and initialisation")
    precision: Literal["auto", "fp32", "bf16"] = param(
        "auto", "training dtype: auto = bf16 on a GPU that supports it or a CPU that computes it natively (AVX512_BF16 "
        "/ AMX; autocast over fp32 weights there), else fp32")
    gradient_checkpointing: bool = param(False, "trade compute for memory in the backward pass")
    train_layers: int = param(
        0, "train only the top N decoder layers and the final norm, the rest frozen (the backward pass stops there and "
        "the optimizer skips them: a 2-core CPU's lever on the step time); 0 = all; not with LoRA")
    lora: LoraParams = param(factory=LoraParams, help="LoRA via peft")
    # --- generation backend ---
    use_vllm: bool = param(False, "generate rollouts with vLLM (else transformers generate)")
    vllm_mode: Literal["colocate", "server"] = param(
        "colocate", "colocate: vLLM in each training process (on CPU with the weight-sync fix); server: `trl vllm-serve`"
    )
    vllm_server_base_url: str = param("", "server mode: base URL, e.g. http://127.0.0.1:8000 ('' = host/port below)")
    vllm_server_host: str = param("127.0.0.1", "server mode: host of `trl vllm-serve`")
    vllm_server_port: int = param(8000, "server mode: port of `trl vllm-serve`")
    vllm_gpu_memory_utilization: float = param(0.3, "colocate mode: share of GPU memory for vLLM (CPU: VLLM_CPU_KVCACHE_SPACE)")
    vllm_max_model_length: int = param(0, "colocate mode: context length of the engine (0 = prompt + completion lengths)")
    vllm_tensor_parallel_size: int = param(1, "colocate mode: tensor parallel size (must divide the number of processes)")
    vllm_enable_sleep_mode: bool = param(False, "colocate mode: offload vLLM weights/cache during the optimizer step (GPU)")
    # --- escape hatch ---
    grpo_overrides: dict[str, Any] = param(
        {}, "any other GRPOConfig field by name (e.g. num_iterations, steps_per_generation); checked"
    )
    report_to: list[str] = param([], "extra trackers (tensorboard, wandb, ...); the curves files are always written")

    def validate(self) -> None:
        if self.samples < 2:
            raise ValueError("samples must be >= 2 (GRPO compares rollouts within a group)")
        if self.max_completion_length < 8:
            raise ValueError("max_completion_length must be >= 8")
        if self.vllm_mode == "server" and self.use_vllm and not (self.vllm_server_base_url or self.vllm_server_host):
            raise ValueError("vllm_mode=server needs vllm_server_base_url or vllm_server_host")
        if self.resume not in ("latest", "never") and not self.resume.strip():
            raise ValueError("resume must be 'latest', 'never' or a checkpoint path")
        if self.train_layers < 0 or (self.train_layers and self.lora.enabled):
            raise ValueError(f"train_layers={self.train_layers}: use 0 (all) or a positive number of top layers, and 0 "
                             "with LoRA (lora.enabled chooses the trained weights itself)")
        if self.efficiency == "among_correct" and self.per_device_train_batch_size % self.samples:
            raise ValueError(f"efficiency=among_correct compares the rollouts of one group in one reward call: set "
                             f"per_device_train_batch_size ({self.per_device_train_batch_size}) to a multiple of "
                             f"samples ({self.samples})")
        if self.cold_start_overrides and not self.cold_start:  # their keys are checked when the cold start builds
            raise ValueError("cold_start_overrides change the cold start only: set cold_start to true, or leave them {}")
        self.limits.validate()
        RolloutParams.validate(self)
        RewardParams.validate(self)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def data_file(self) -> str:
        """The training items this run reads: train_file or, with `data: unbalanced`, unbalanced_file."""
        return self.unbalanced_file if self.data == "unbalanced" else self.train_file

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "model"

    def fingerprint(self) -> str:
        """Hash of every setting that changes the training trajectory (not output/cadence/resume settings): a
        checkpoint is resumed only when its run had the same fingerprint."""
        from pipeline.runs import fingerprint

        d = dataclasses.asdict(self)
        for key in ("output_dir", "resume", "save_steps", "save_total_limit", "logging_steps", "report_to", "max_steps",
                    "eval_steps", "num_train_epochs"):
            d.pop(key, None)
        return fingerprint(d)


def grpo_config_fields() -> set[str]:
    from trl import GRPOConfig

    return {f.name for f in dataclasses.fields(GRPOConfig)}


def no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def to_grpo_config(params: TrainParams, *, reward_weights: list[float] | None = None, **extra: Any):
    """The `GRPOConfig` for these params (output under `<output_dir>/checkpoints`).

    `extra` is for values only known at run time (e.g. `vllm_max_model_length`); `grpo_overrides` win over both.
    """
    from trl import GRPOConfig

    known = grpo_config_fields()
    mapped = sorted(set(params.grpo_overrides) & {"num_generations", "max_tool_calling_iterations", "output_dir",
                                                  "multi_objective_aggregation", "scale_rewards"})
    if mapped:
        raise ValueError(f"train.grpo_overrides: {mapped[0]!r} is set from the train section (num_generations = "
                         "train.samples, max_tool_calling_iterations = rollout.limits.max_turns - 1, output_dir = "
                         "train.output_dir, multi_objective_aggregation = train.efficiency, scale_rewards = "
                         "train.scale_rewards); set those instead")
    bad = sorted(set(params.grpo_overrides) - known)
    if bad:
        import difflib

        close = difflib.get_close_matches(bad[0], sorted(known), n=1)
        raise ValueError(
            f"train.grpo_overrides: {bad[0]!r} is not a GRPOConfig field" + (f"; did you mean {close[0]!r}?" if close else "")
        )
    from pipeline.hardware import training_bf16

    bf16 = training_bf16(params.precision)
    kwargs: dict[str, Any] = dict(
        output_dir=str(params.checkpoints_dir),
        num_generations=params.samples,
        per_device_train_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler_type,
        warmup_steps=params.warmup_steps,
        beta=params.beta,
        epsilon=params.epsilon,
        loss_type=params.loss_type,
        scale_rewards=params.scale_rewards,
        temperature=params.temperature,
        top_p=params.top_p,
        max_completion_length=params.max_completion_length,
        max_tool_calling_iterations=params.limits.max_turns - 1,
        max_steps=params.max_steps if params.max_steps > 0 else -1,
        num_train_epochs=params.num_train_epochs,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=params.save_total_limit,
        eval_strategy="steps" if params.eval_steps > 0 and params.eval_file else "no",
        eval_steps=params.eval_steps if params.eval_steps > 0 else None,
        logging_steps=params.logging_steps,
        seed=params.seed,
        data_seed=params.seed,
        bf16=bf16,
        # without a GPU, several processes (torchrun) must be told to use CPU + gloo, else each trains alone
        use_cpu=no_gpu(),
        gradient_checkpointing=params.gradient_checkpointing,
        use_vllm=params.use_vllm,
        vllm_mode=params.vllm_mode,
        vllm_server_base_url=params.vllm_server_base_url or None,
        vllm_server_host=params.vllm_server_host,
        vllm_server_port=params.vllm_server_port,
        vllm_gpu_memory_utilization=params.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=params.vllm_tensor_parallel_size,
        vllm_enable_sleep_mode=params.vllm_enable_sleep_mode,
        reward_weights=reward_weights,
        report_to=list(params.report_to) or "none",
        log_completions=False,
        remove_unused_columns=False,
        disable_tqdm=True,
        # fixed order of items and rollouts, so that a resumed run continues the same data stream
        shuffle_dataset=True,
    )
    if params.vllm_max_model_length > 0:
        kwargs["vllm_max_model_length"] = params.vllm_max_model_length
    if EFFICIENCY[params.efficiency] is not None:  # paper: TRL's default, as before the switch existed
        kwargs["multi_objective_aggregation"] = EFFICIENCY[params.efficiency]
    kwargs.update(extra)
    kwargs.update(params.grpo_overrides)
    return GRPOConfig(**kwargs)
