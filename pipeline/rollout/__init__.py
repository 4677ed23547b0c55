"""Rollouts: the shared `rollout:` settings (config: `RolloutParams`), protocols (how a turn is rendered and parsed),
the one scorer (score: turn sequence, answer, format, search count), the one tool step (step), the TRL environment
(environment), engines (vLLM, transformers) and the batched multi-turn loop (loop)."""
from pipeline.rollout.protocols import Limits, Protocol, get_protocol

__all__ = ["Limits", "Protocol", "get_protocol"]
