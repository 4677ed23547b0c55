"""Do the probe evidence and the GRPO reward score every rollout alike? The one-scorer check on a real run.

    python bench/check_scorer_agreement.py [--params params.yaml] [--evidence 'data/probe/*/evidence.parquet']

For every probe rollout: the reward's own functions (trainer/rewards.py REGISTRY "format" and "paper", built from the
`train:` section with its shared `rollout:` settings) are called the way TRL calls them, on the rollout's messages
after the prompt, and their format term and search count are compared with the evidence's `valid_format` and
`search_count` (written by the probe loop). Prints one JSON object: rollouts compared and every disagreement (first
ten listed), with the machine. Reads the evidence and params.yaml; writes nothing.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--evidence", default="data/probe/*/evidence.parquet", help="glob of probe evidence files")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from pipeline.config import load_section
    from pipeline.hardware import machine_line
    from trainer.config import TrainParams
    from trainer.rewards import REGISTRY

    train: TrainParams = load_section(TrainParams, "train", args.params)
    protocol = train.make_protocol()
    files = sorted(glob.glob(args.evidence))
    if not files:
        print(f"no evidence matches {args.evidence!r}: run `python -m stages probe` first", file=sys.stderr)
        return 2
    compared, bad = 0, []
    for path in files:
        rows = pq.read_table(path, columns=["rollout_id", "condition", "messages", "valid_format", "search_count",
                                           "error"]).to_pylist()
        by_cond: dict[str, list[dict]] = {}
        for r in rows:
            if not str(r["error"] or "").startswith("engine:"):  # engine failures have no trajectory
                by_cond.setdefault(r["condition"], []).append(r)
        for cond, rs in by_cond.items():
            fmt = REGISTRY["format"](train, protocol, cond)
            completions = [[m for m in json.loads(r["messages"]) if m.get("role") not in ("system",)][1:] for r in rs]
            values = fmt(prompts=[None] * len(rs), completions=completions, answer=[""] * len(rs))
            scored = fmt.scorer.score(completions, [""] * len(rs))
            for r, v, s in zip(rs, values, scored, strict=True):
                compared += 1
                if bool(v) != bool(r["valid_format"]) or s["trajectory"].search_count != r["search_count"]:
                    bad.append({"rollout_id": r["rollout_id"], "evidence_format": r["valid_format"],
                                "reward_format": v, "evidence_search_count": r["search_count"],
                                "reward_search_count": s["trajectory"].search_count})
    print(json.dumps({"machine": machine_line(), "files": files, "format_rule": train.format_rule,
                      "rollouts_compared": compared, "disagreements": len(bad), "first": bad[:10]}, indent=1))
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
