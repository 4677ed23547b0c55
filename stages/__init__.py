"""One thin module per pipeline stage; `python -m stages <stage> --help` for each.

A stage module defines:
  Params                a dataclass (fields made with `pipeline.config.param`, help text on each) = its params.yaml section
  SECTION               optional: the params.yaml section name when it differs from the module name
  add_arguments(parser) optional: stage-only flags (e.g. --source, --shard, --repo-id)
  run(params, args)     does the work: reads inputs, calls pipeline/, writes outputs and metrics
Heavy imports (torch, vllm, trl) happen inside `run` so that `--help` stays fast.
"""

STAGES = (
    "gather",
    "index",
    "search",
    "dedup",
    "bootstrap",
    "probe",
    "label",
    "balance",
    "publish",
    "train",
    "evaluate",
)
