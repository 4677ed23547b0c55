"""One thin module per pipeline stage; `python -m stages <stage> --help` for each.

A stage module is thin (about 120 lines at most) and never imports another stage; it defines:
  Params                a dataclass (fields made with `pipeline.config.param`, help text on each) = its params.yaml
                        section; where the library reads it too, the library's class (e.g. `pipeline.probe.ProbeParams`)
  SECTION               optional: the params.yaml section name when it differs from the module name
  add_arguments(parser) optional: stage-only flags (e.g. --source, --shard, --repo-id)
  run(params, args)     reads its params, calls pipeline/ (or trainer/), writes outputs and metrics
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
    "reprobe",
    "evaluate",
)
