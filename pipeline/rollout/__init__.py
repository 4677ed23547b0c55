"""Rollouts: protocols (how a turn is rendered and parsed), engines and the multi-turn loop."""
from pipeline.rollout.protocols import Limits, Protocol, get_protocol

__all__ = ["Limits", "Protocol", "get_protocol"]
