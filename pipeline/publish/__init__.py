"""Publish: the curated data as a Hugging Face dataset folder (built with `datasets`, card with huggingface_hub's
DatasetCard), its validation, the push to the Hub, and the MMSearch-R1/veRL export.

Modules, in the order the data flows (each imports only the ones above it):
  params.py    PublishParams, the `publish:` section of params.yaml
  verl.py      export of the published splits to the veRL training parquet
  inputs.py    read and check the pipeline outputs (splits, evidence, search cache, exclusions) as Arrow tables
  folder.py    one DatasetDict per config -> parquet shards (Dataset.shard + to_parquet), configs/dataset_info, plots
  figures.py   the card's figures: metrics files, summaries of the published tables
  card.py      the card: DatasetCardData metadata + the data_cards/ template -> DatasetCard
  validate.py  card and shard checks, and the load of every config with datasets.load_dataset
  push.py      readiness checks (offline, token, repo id) and the one-commit upload with huggingface_hub
  build.py     build_dataset: all of the above for one run (no network)
"""
