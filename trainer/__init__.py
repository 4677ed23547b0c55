"""GRPO training in the multi-turn search environment (TRL `GRPOTrainer`), and the supervised cold start.

The trainer uses the same rollout protocol objects, tool step and scorer as the probe and the evaluator (the
environment TRL drives is pipeline/rollout/environment.py, the reward's scorer pipeline/rollout/score.py):
  config.py       `TrainParams` (the `train:` section + the shared `rollout:` section) and its mapping onto `GRPOConfig`
  rewards.py      the paper's reward (Eq. 1): accuracy x search penalty + format, components logged separately
  vllm_cpu.py     the vLLM-CPU weight-sync fix for colocated generation
  callbacks.py    training curves (JSON/TSV for DVC plots, PNG)
  grpo.py         dataset, trainer construction, checkpoints/resume (fingerprint through pipeline/runs.py), final model
  sft.py          the supervised cold start on demonstrations (loss on assistant tokens only)
  cold_start.py   the labeler bootstrap (`bootstrap:` section): demonstrations (pipeline/bootstrap.py) + sft.py; used
                  by the bootstrap stage and by the train stage's optional cold start
  accelerate/     accelerate configs for multi-process runs (DDP + colocated vLLM)
"""
