"""How much of the GPU the colocated vLLM engine may take: `gpu_memory_utilization="auto"`.

vLLM reads `gpu_memory_utilization` as "this fraction of the device's total memory is mine"
(weights + activations + KV cache) and refuses to start when less than that is free. Next to
a learner on the same GPU the fraction has to leave room for the learner, so "auto" derives it
from what the learner was measured to use:

    vllm_bytes  = total - learner_bytes - margin
    utilization = vllm_bytes / total

`learner_bytes` is the learner's peak *reserved* memory (what torch's caching allocator took
from the device, which is what vLLM sees as used), by default read from
`torch.cuda.max_memory_reserved()` after a warm-up step. Using the peak is conservative when
vLLM sleeps during learner steps (the learner's activations are gone while vLLM generates) and
exact when it does not. The functions here are pure: every figure comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GIB",
    "MemoryPlan",
    "kv_cache_bytes_per_token",
    "plan_gpu_memory",
    "resolve_gpu_memory_utilization",
    "vllm_min_bytes",
]

GIB = 1 << 30
DEFAULT_MARGIN_BYTES = 2 * GIB
"""Head-room left unclaimed: CUDA context, NCCL/cuBLAS workspaces, allocator fragmentation."""
DEFAULT_OVERHEAD_BYTES = 1 * GIB
"""vLLM's own non-KV needs beyond the weights: activation peak of the profile run, sampler."""


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    total_bytes: int
    """Device memory, bytes."""
    learner_bytes: int
    """Learner peak, bytes."""
    margin_bytes: int
    """Left to nobody, bytes."""
    vllm_bytes: int
    """What vLLM may claim, bytes (= utilization * total)."""
    min_vllm_bytes: int
    """What vLLM needs at least, bytes (weights + one max-length sequence of KV + overhead)."""
    utilization: float
    """The value to pass as vLLM's `gpu_memory_utilization`, in (0, 1)."""


def kv_cache_bytes_per_token(*, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V for one token across all layers, bytes."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def vllm_min_bytes(
    *,
    weight_bytes: int,
    kv_bytes_per_token: int,
    max_model_len: int,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
) -> int:
    """The least vLLM can start with: its weights, KV for one full-length sequence, overhead."""
    return weight_bytes + kv_bytes_per_token * max_model_len + overhead_bytes


def plan_gpu_memory(
    *,
    total_bytes: int,
    learner_bytes: int,
    min_vllm_bytes: int,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
) -> MemoryPlan:
    """Split the device between learner and vLLM; raise when both cannot fit."""
    for name, value in [
        ("total_bytes", total_bytes),
        ("learner_bytes", learner_bytes),
        ("min_vllm_bytes", min_vllm_bytes),
        ("margin_bytes", margin_bytes),
    ]:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if total_bytes == 0:
        raise ValueError("total_bytes must be > 0")
    vllm_bytes = total_bytes - learner_bytes - margin_bytes
    if vllm_bytes < min_vllm_bytes:
        raise ValueError(
            f"learner and vLLM do not fit on one {total_bytes / GIB:.1f} GiB device: learner peak "
            f"{learner_bytes / GIB:.2f} GiB + margin {margin_bytes / GIB:.2f} GiB leaves "
            f"{max(vllm_bytes, 0) / GIB:.2f} GiB, vLLM needs at least {min_vllm_bytes / GIB:.2f} GiB "
            "(weights + KV cache for one max_model_len sequence + overhead). Shrink the learner "
            "(smaller micro-batch, 8-bit optimiser, activation checkpointing), lower max_model_len, "
            "or pass gpu_memory_utilization explicitly."
        )
    return MemoryPlan(
        total_bytes=total_bytes,
        learner_bytes=learner_bytes,
        margin_bytes=margin_bytes,
        vllm_bytes=vllm_bytes,
        min_vllm_bytes=min_vllm_bytes,
        # floor to 1e-3 so that rounding never hands vLLM more than vllm_bytes
        utilization=int(vllm_bytes / total_bytes * 1000) / 1000,
    )


def resolve_gpu_memory_utilization(
    requested: float | str,
    *,
    total_bytes: int,
    learner_bytes: int,
    min_vllm_bytes: int,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
) -> float:
    """An explicit fraction wins as given; "auto" plans from the learner's measured peak."""
    if isinstance(requested, str):
        if requested != "auto":
            raise ValueError(f"gpu_memory_utilization must be a float in (0, 1] or 'auto', got {requested!r}")
        return plan_gpu_memory(
            total_bytes=total_bytes,
            learner_bytes=learner_bytes,
            min_vllm_bytes=min_vllm_bytes,
            margin_bytes=margin_bytes,
        ).utilization
    if not 0 < requested <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {requested}")
    return float(requested)
