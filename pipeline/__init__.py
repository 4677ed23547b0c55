"""Search-balanced VQA curation and GRPO training after MMSearch-R1: the library (no CLI parsing here).

Shared contracts and helpers:
  schema.py     item, rollout and exclusion schemas; atomic parquet writes
  config.py     typed params sections, type-checked overrides, shared sections (the `rollout:` section)
  io.py         atomic JSON, exclusion tables, progress bars
  images.py     image normalisation; `image_bytes`, the one way to get an image's encoded bytes
  models.py     model specs (packaged, tiny, folder, Hub id, a bootstrap's model_ref.json) and local model folders
  judge.py      answer judges (EM with aliases, SubEM, F1, LLM)
  runs.py       fingerprints, per-unit parts, resume, shards, merge, stale cleanup: every long stage's run
By stage:
  gather/       sources -> items (demo world, local files, HF datasets, MMSearch-R1/veRL parquet)
  search/       the tools (image_search, text_search), their backends (registry.py) and the cache
  dedup/        perceptual hashes, near-duplicate clusters, contamination against evaluation sets
  bootstrap.py  demonstrations for the labeler's cold start (the fine-tuning is trainer/sft.py)
  rollout/      the shared rollout settings (config.py), protocols, the one scorer (score.py), the one tool step
                (step.py), TRL's environment (environment.py), engines, the batched multi-turn loop
  probe.py      probe rounds (fixed K or adaptive), evidence, summary metrics
  curate/       label rule, agreement with a source's reference label, balancing, plots
  publish/      the dataset folder through `datasets`, its card (DatasetCard), validation, push, veRL export
  evaluate/     benchmark data, modes, metrics, report, the resumable run
"""
