"""Triton helpers shared by the span-loss kernels (`span_loss_triton.py`, `span_loss_splitv.py`):
the dot precision, the logit tile every kernel recomputes, the autotuner and its shared-memory prune,
the fp16 gradient scale.

Precision: bf16/fp16 tiles go to the tensor cores as they are (fp32 accumulation). fp32 tiles follow
torch's own switch, `torch.set_float32_matmul_precision`: "highest" (torch's default) is IEEE fp32,
"high" is 3×tf32 (≈ fp32 accuracy on the tensor cores), "medium" is 1×tf32 — opt-in, like cuBLAS.
Under TRITON_INTERPRET=1 (CPU) every tile is upcast to fp32 (the interpreter's bf16 arithmetic is
wrong) and one fixed config runs; on GPU the configs are autotuned and pruned by shared memory.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_PRECISION = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}


def dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    """(FP32_DOT, PRECISION) constexprs for tiles of this dtype."""
    if INTERPRET:
        return True, "ieee"
    if dtype == torch.float32:
        return True, _PRECISION[torch.get_float32_matmul_precision()]
    return False, "ieee"  # unused: 16-bit tiles take the native tensor-core path


@triton.jit
def logit_tile(
    h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
    H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """acc [BLOCK_M, BLOCK_V] = h[rows] · W[offs_v]ᵀ in fp32, streamed over H in BLOCK_K slices
    (every kernel recomputes logit tiles this way; none stores them). rows and offs_v are int64:
    V·H and N·H can pass 2³¹ at 7B+ sizes, and so can offs_k·stride for a column-major W or a
    transposed h: those products are int64 too (free: the summed offsets are int64 anyway)."""
    acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < H
        k64 = offs_k.to(tl.int64)
        h = tl.load(
            h_ptr + rows[:, None] * stride_hn + k64[None, :] * stride_hh,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + offs_v[:, None] * stride_wv + k64[None, :] * stride_wh,
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        if FP32_DOT:
            acc = tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(h, tl.trans(w), acc)
    return acc


def smem_bytes(block_m: int, block_v: int, block_k: int, stages: int, elem: int, kind: str = "fwd") -> int:
    """Shared memory of one program, an upper estimate: `stages` buffered (h, W) k-slices plus a
    [BLOCK_M, BLOCK_V] fp32 tile staged between the dots; fp32 operands × 1.5 (3×tf32 splits them).
    The atomic backward ("bwd") also stages dz and dzᵀ as dot operands. The AOT compile test
    (tests/test_kernels_compile_aot.py) holds every autotuned config's real figure to this bound."""
    grow = 1.5 if elem == 4 else 1
    tiles = stages * (block_m + block_v) * block_k * elem * grow
    dz = 2 * block_m * block_v * elem * grow if kind == "bwd" else 0
    return int(tiles + dz) + block_m * block_v * 4


def smem_limit() -> int:
    """This GPU's shared memory per block, in bytes: the prune's limit. Looked up here at each prune,
    so tests and `benchmarks/ptxas_sweep.py` stand in a target's figure by patching this module."""
    dev = torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(dev)["max_shared_mem"]


def m_bucket(m: int) -> int:
    """M rounded up to a power of 4 in [16, 16384]: the autotune key's M. A tile tuned on a few rows
    is not reused for thousands, and a few buckets keep tuning rare."""
    b = 16
    while b < min(m, 16384):
        b *= 4
    return b


# Before tuning, configs are pruned by an estimate of their shared memory against the GPU's limit, so a
# config that cannot fit is never compiled (Triton would drop it silently after a failed compile).
def autotuned(
    kernel: triton.JITFunction, tiles: dict[int, list[tuple]], key: list[str], kind: str = "fwd", **kw
) -> triton.runtime.Autotuner:
    """`kernel` autotuned over `tiles`; a launch tries only the tiles of its operand width (16 or 32
    bits) whose shared memory (`smem_bytes` for `kind`) fits this GPU. The key gets M's bucket
    (`M_BUCKET`), and the choice is cached on disk (Triton's cache dir): the tile, hence the bits,
    of a shape stay the same from one process to the next on this machine, instead of following
    each process's timing noise. (The forward's split count S follows the SM count: other GPUs,
    other bits.)"""
    pairs = [
        (bits, triton.Config(dict(BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk), num_warps=w, num_stages=s))
        for bits in (16, 32)
        for bm, bv, bk, w, s in tiles[bits]
    ]
    width = {id(c): bits for bits, c in pairs}

    def prune(configs, named_args, **_):
        elem = named_args["h_ptr"].element_size()
        mine = [c for c in configs if width[id(c)] == (32 if elem == 4 else 16)]
        limit = smem_limit()
        kb = lambda c: smem_bytes(
            c.kwargs["BLOCK_M"], c.kwargs["BLOCK_V"], c.kwargs["BLOCK_K"], c.num_stages, elem, kind
        )
        return [c for c in mine if kb(c) <= limit] or [min(mine, key=kb)]

    return triton.autotune(
        [c for _, c in pairs], key=["M_BUCKET", *key], prune_configs_by={"early_config_prune": prune},
        cache_results=True, **kw,
    )(kernel)  # fmt: skip


def grad_scale(g: Tensor, temperature: float) -> Tensor:
    """[1] fp32 power of two s with max|s·g/τ| in (1/2, 1]: exact to apply and to undo (no sync)."""
    top = (g.abs().amax() / temperature).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.exp2(-torch.ceil(torch.log2(top))).reshape(1)
