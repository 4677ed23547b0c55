"""vLLM-CPU weight-sync fix for GRPO with colocated vLLM.

On CPU, vLLM's `UnquantizedLinearMethod.process_weights_after_loading` repacks every linear layer for its CPU GEMM
kernels and deletes `layer.weight`; TRL's weight sync then fails at the first step (`'Parameter' object has no
attribute 'weight_loader'`). Marking each layer with `_cpu_skip_gemm_dispatch = True` before that method runs keeps
the plain weight and uses `torch.nn.functional.linear`, so `model.load_weights` can overwrite it after every step.

`cpu_weight_sync_fix()` is a context manager that installs the mark for engines built inside it (TRL builds its
colocated `LLM` in `GRPOTrainer.__init__`); it is a no-op on non-CPU platforms. Colocated engines run their worker
in the training process (`distributed_executor_backend="external_launcher"`), so an in-process patch reaches it.
Reads/writes nothing.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


@contextlib.contextmanager
def cpu_weight_sync_fix(enabled: bool = True) -> Iterator[bool]:
    """Patch `UnquantizedLinearMethod.process_weights_after_loading` while the block runs; yields whether it did."""
    if not enabled or not _is_cpu_platform():
        yield False
        return
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    original = UnquantizedLinearMethod.process_weights_after_loading

    @functools.wraps(original)
    def keep_weights(self, layer):
        layer._cpu_skip_gemm_dispatch = True  # keep layer.weight for TRL's load_weights (see module docstring)
        return original(self, layer)

    UnquantizedLinearMethod.process_weights_after_loading = keep_weights
    try:
        yield True
    finally:
        UnquantizedLinearMethod.process_weights_after_loading = original
