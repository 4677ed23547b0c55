"""GRPO training in the multi-turn search environment (TRL `GRPOTrainer`).

The trainer uses the same rollout protocol objects and search tools as the probe and the evaluator:
  config.py       `TrainParams` (the `train:` section of params.yaml) and its mapping onto `GRPOConfig`
  rewards.py      the paper's reward (Eq. 1): accuracy x search penalty + format, components logged separately
  environment.py  the per-rollout environment TRL drives (`environment_factory`), over the protocol's tools
  vllm_cpu.py     the vLLM-CPU weight-sync fix for colocated generation
  callbacks.py    training curves (JSON/TSV for DVC plots, PNG)
  grpo.py         dataset, trainer construction, optional cold start, checkpoints/resume, final model
  accelerate/     accelerate configs for multi-process runs (DDP + colocated vLLM)
"""
