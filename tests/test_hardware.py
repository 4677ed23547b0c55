"""The machine description and the per-CPU dtype choice (pipeline/hardware.py), with the CPU flags made up."""
from __future__ import annotations

import pytest

from pipeline import hardware


@pytest.fixture
def cpu(monkeypatch):
    def set_flags(*flags, model="Test CPU"):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hardware, "cpu_model", lambda: model)
        monkeypatch.setattr(hardware, "_cuda", lambda: (False, False, ""))
    return set_flags


def test_avx2_only_cpu_uses_float32_everywhere(cpu):
    cpu("avx", "avx2", "fma")
    assert hardware.inference_dtype("auto") == "float32" and not hardware.training_bf16("auto")
    assert "AVX2 only" in hardware.machine_line() and not hardware.machine()["avx512"]


def test_avx512_bf16_without_amx_trains_in_bf16_and_infers_in_float32(cpu):
    cpu("avx2", "avx512f", "avx512_bf16")
    assert hardware.inference_dtype("auto") == "float32" and hardware.training_bf16("auto")
    assert "AVX-512 (bf16), no AMX" in hardware.machine_line()


def test_amx_cpu_uses_bf16(cpu):
    cpu("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    assert hardware.inference_dtype("auto") == "bfloat16" and hardware.training_bf16("auto")


def test_explicit_choices_win(cpu):
    cpu("avx2")
    assert hardware.inference_dtype("bfloat16") == "bfloat16" and hardware.training_bf16("bf16")
    assert not hardware.training_bf16("fp32")


def test_this_machine_is_described():
    m = hardware.machine()
    assert m["cpu"] and m["cores"] >= 1 and isinstance(m["avx512"], bool)


def test_engine_dtype_machine_follows_the_cpu(cpu):
    from pipeline.config import ParamsError, build
    from pipeline.rollout.engines import EngineParams

    cpu("avx2")
    assert EngineParams().resolved_dtype() == "float32"  # the default is chosen per device, never hard-coded
    cpu("avx512f", "avx512_bf16", "amx_bf16")
    assert EngineParams().resolved_dtype() == "bfloat16"
    assert EngineParams(dtype="float16").resolved_dtype() == "float16"
    with pytest.raises(ParamsError, match="dtype"):
        build(EngineParams, {"dtype": "fp8"})


@pytest.mark.parametrize("flags, bf16", [(("avx2",), False), (("avx2", "avx512f", "avx512_bf16"), True)])
def test_grpo_training_precision_follows_the_cpu(cpu, flags, bf16):
    """GRPO's `precision: auto` picks bf16 autocast exactly where the CPU computes bf16 natively (as the cold start
    does); an explicit fp32 wins."""
    from pipeline.config import build
    from trainer.config import TrainParams, to_grpo_config

    cpu(*flags)
    assert to_grpo_config(build(TrainParams, {})).bf16 is bf16
    assert to_grpo_config(build(TrainParams, {"precision": "fp32"})).bf16 is False
