"""Triton span log-probs: the forward kernel, the atomic backward kernel, their launchers.

Both kernels read the masked rows of h through idx (no gathered copy of h), stream W in
[BLOCK_V, BLOCK_K] tiles and keep logits only as one [BLOCK_M, BLOCK_V] fp32 tile in registers:
no [M, V] buffer exists, and rows outside the mask cost nothing. Per row, only lse/logp/entropy
(fp32) reach memory. The split-V backward (the default, `span_loss_splitv.py`) shares `logit_tile`,
the dot precision and the autotuner with these kernels (`triton_common.py`, which also says how each
dtype reaches the tensor cores).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRET, autotuned, dot_mode, grad_scale, logit_tile, m_bucket

Tensor = torch.Tensor


# Forward, per masked row t and vocabulary split s (columns c of that split):
#   z_c = (h_t · W_c) / τ
#   max_s = max_c z_c      sum_s = Σ_c e^(z_c − max_s)      zsum_s = Σ_c e^(z_c − max_s)·z_c
#   zy_s = z_y if y lies in the split else 0
# The host combines splits: lse = max + log Σ_s sum_s·e^(max_s − max); logp = Σ_s zy_s − lse;
# entropy = lse − Σ_s zsum_s·e^(max_s − max) / e^(lse − max). Splitting V keeps the GPU busy
# when M is small (few row blocks).
@triton.jit
def _span_fwd_kernel(
    h_ptr, w_ptr, idx_ptr, y_ptr, part_ptr,  # h [N, H], W [V, H], idx [M], y [M], part [4, S, M] fp32
    M, M_BUCKET, stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,  # M_BUCKET: autotune key only
    V: tl.constexpr, H: tl.constexpr, S: tl.constexpr,  # constexpr: fixed per model; loop bounds
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    rows = tl.load(idx_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    y = tl.load(y_ptr + offs_m, mask=row_ok, other=-1)
    BLOCKS_PER_SPLIT: tl.constexpr = ((V + BLOCK_V - 1) // BLOCK_V + S - 1) // S

    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    run_zsum = tl.zeros([BLOCK_M], tl.float32)
    zy = tl.zeros([BLOCK_M], tl.float32)
    for b in range(0, BLOCKS_PER_SPLIT):
        offs_v = ((pid_s * BLOCKS_PER_SPLIT + b) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_ok = offs_v < V  # a block past V is all padding: it must leave the state unchanged
        acc = logit_tile(
            h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
            H, BLOCK_M, BLOCK_V, BLOCK_K, FP32_DOT, PRECISION,
        )  # fmt: skip
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))  # [BLOCK_M, BLOCK_V]
        new_max = tl.maximum(run_max, tl.max(z, 1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # no (−inf) − (−inf) = nan
        scale = tl.exp(run_max - safe_max)
        e = tl.exp(z - safe_max[:, None])  # 0 on padded columns
        run_sum = run_sum * scale + tl.sum(e, 1)
        run_zsum = run_zsum * scale + tl.sum(e * tl.where(col_ok[None, :], z, 0.0), 1)
        zy += tl.sum(tl.where(offs_v[None, :] == y[:, None], z, 0.0), 1)
        run_max = new_max
    base = part_ptr + pid_s * M + offs_m  # 4·S·M fp32: far below 2³¹
    tl.store(base, run_max, mask=row_ok)
    tl.store(base + S * M, run_sum, mask=row_ok)
    tl.store(base + 2 * S * M, run_zsum, mask=row_ok)
    tl.store(base + 3 * S * M, zy, mask=row_ok)


# Atomic backward, per tile of masked rows × vocabulary columns, with g_t = dL/dlogp_t:
#   p = e^(z − lse)      dz = g·(onehot(y) − p)/τ      dh_t += dz·W      dW_c += dzᵀ·h
# Tiles along V add into the same dh rows and tiles along M into the same dW rows: fp32 atomics,
# relaxed (the sums need no ordering), so the result is not reproducible bit for bit. The grid is
# row-block-major (pid 0 walks V): programs in flight share h rows and write distinct dW tiles.
# fp16: dz is multiplied by `scale` (a power of two bringing max|g/τ| to 1) before the cast to the
# dot's dtype, and the products by 1/scale after, so small dz do not flush to zero.
@triton.jit
def _span_bwd_kernel(
    h_ptr, w_ptr, idx_ptr, y_ptr, lse_ptr, g_ptr, scale_ptr, dh_ptr, dw_ptr,  # dh [M, H], dW [V, H] fp32
    M, M_BUCKET, stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,  # M_BUCKET: autotune key only
    V: tl.constexpr, H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr, COMPUTE_DW: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    pid_v = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    row_ok = offs_m < M
    col_ok = offs_v < V
    rows = tl.load(idx_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    y = tl.load(y_ptr + offs_m, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_m, mask=row_ok, other=0.0) * inv_temp
    unscale = 1.0
    if SCALED:
        s = tl.load(scale_ptr)
        g = g * s
        unscale = 1.0 / s

    acc = logit_tile(
        h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
        H, BLOCK_M, BLOCK_V, BLOCK_K, FP32_DOT, PRECISION,
    )  # fmt: skip
    p = tl.exp(tl.where(col_ok[None, :], acc * inv_temp, float("-inf")) - lse[:, None])
    dz = g[:, None] * (tl.where(offs_v[None, :] == y[:, None], 1.0, 0.0) - p)  # [BLOCK_M, BLOCK_V]
    dz = tl.where(row_ok[:, None], dz, 0.0)
    dh_rows = offs_m.to(tl.int64)[:, None] * H

    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < H
        k64 = offs_k.to(tl.int64)  # int64 products with the strides, as in logit_tile
        w = tl.load(
            w_ptr + offs_v[:, None] * stride_wv + k64[None, :] * stride_wh,
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        if FP32_DOT:
            dh = tl.dot(dz, w.to(tl.float32), input_precision=PRECISION)
        else:
            dh = tl.dot(dz.to(w.dtype), w)
        tl.atomic_add(
            dh_ptr + dh_rows + offs_k[None, :],
            dh * unscale,
            mask=row_ok[:, None] & k_ok[None, :],
            sem="relaxed",
        )
        if COMPUTE_DW:
            h = tl.load(
                h_ptr + rows[:, None] * stride_hn + k64[None, :] * stride_hh,
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if FP32_DOT:
                dw = tl.dot(tl.trans(dz), h.to(tl.float32), input_precision=PRECISION)
            else:
                dw = tl.dot(tl.trans(dz.to(h.dtype)), h)
            tl.atomic_add(
                dw_ptr + offs_v[:, None] * H + offs_k[None, :],
                dw * unscale,
                mask=col_ok[:, None] & k_ok[None, :],
                sem="relaxed",
            )


# ---- configs --------------------------------------------------------------------------------------
# Interpreter: one small config (numpy runs it serially). GPU: a few tiles per kernel, autotuned per
# (M bucket, V, H, dtypes, S, precision). Tiles are (BLOCK_M, BLOCK_V, BLOCK_K, num_warps, num_stages),
# listed apart for 16-bit and fp32 operands, and checked by an ahead-of-time compile of every launch
# as the runtime specialises it (Triton 3.6 and its ptxas, the GPU machine's; V = 151936, H = 1536;
# `benchmarks/ptxas_sweep.py`, run on every CI by tests/test_kernels_compile_aot.py): none spills a
# register at sm_90 and each fits an H100's and an A100's shared memory. 64×128×64 tiles at 4 warps,
# the old default, spilled 276–2388 bytes.
# Before tuning, configs are pruned by their shared memory against the GPU's limit (`autotuned`).
# The forward's BLOCK_M is fixed: the split count S is derived from it before the launch.
FWD_BLOCK_M = 32 if INTERPRET else 64
_FIXED = dict(BLOCK_V=64, BLOCK_K=32)
FWD_TILES = {
    16: [(64, 128, 64, 8, 3), (64, 128, 64, 8, 4), (64, 256, 32, 8, 3), (64, 128, 32, 4, 3)],
    32: [(64, 64, 32, 8, 3), (64, 128, 32, 8, 3)],
}
BWD_TILES = {
    16: [(64, 128, 32, 8, 3), (64, 64, 64, 8, 3), (128, 64, 32, 8, 3), (64, 64, 32, 8, 3)],
    32: [(64, 64, 32, 8, 3), (32, 64, 32, 8, 3)],
}


def _fwd_tiles() -> dict[int, list[tuple]]:
    return {bits: [t for t in ts if t[0] == FWD_BLOCK_M] for bits, ts in FWD_TILES.items()}


if INTERPRET:
    _fwd, _bwd = _span_fwd_kernel, _span_bwd_kernel
    _fwd_meta, _bwd_meta = {**_FIXED, "BLOCK_M": FWD_BLOCK_M}, {**_FIXED, "BLOCK_M": 32}
else:
    # the forward's BLOCK_M comes from the launch (FWD_BLOCK_M), not from the tuner
    _fwd = autotuned(_span_fwd_kernel, _fwd_tiles(), key=["V", "H", "S", "PRECISION"])
    _bwd = autotuned(
        _span_bwd_kernel,
        BWD_TILES,
        key=["V", "H", "PRECISION", "COMPUTE_DW"],
        kind="bwd",
        reset_to_zero=["dh_ptr", "dw_ptr"],  # tuning runs every config into the same accumulators
    )
    _fwd_meta, _bwd_meta = {}, {}


def num_splits(m: int, v: int, device: torch.device) -> int:
    """V splits of the forward so that ~4 programs per SM exist even when M is small."""
    if INTERPRET or device.type != "cuda":
        return 2 if v > 2 * _FIXED["BLOCK_V"] else 1  # still exercises the split combine
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(4 * sms // max(1, triton.cdiv(m, FWD_BLOCK_M)), triton.cdiv(v, 256), 64))
    return 1 << (want.bit_length() - 1)  # a power of two: S is constexpr, few recompiles


def triton_forward(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, lse), each [M] fp32, for the rows idx [M] of hidden with targets [M]."""
    m, v, hdim = idx.numel(), weight.shape[0], weight.shape[1]
    s = num_splits(m, v, hidden.device)
    part = torch.full((4, s, m), float("nan"), device=hidden.device, dtype=torch.float32)  # poisoned
    if m:
        fp32_dot, precision = dot_mode(hidden.dtype)
        _fwd[(triton.cdiv(m, FWD_BLOCK_M), s)](
            hidden, weight, idx, targets, part, m, m_bucket(m), *hidden.stride(), *weight.stride(),
            1.0 / temperature,
            V=v, H=hdim, S=s, FP32_DOT=fp32_dot, PRECISION=precision, **_fwd_meta,
        )  # fmt: skip
    mx, run_sum, run_zsum, zy = part
    top = mx.amax(0)  # [M]
    scale = torch.exp(mx - top)  # [S, M]
    total = (run_sum * scale).sum(0)
    lse = top + torch.log(total)
    return zy.sum(0) - lse, lse - (run_zsum * scale).sum(0) / total, lse


def atomic_backward(
    grad: Tensor,
    hidden: Tensor,
    weight: Tensor,
    idx: Tensor,
    targets: Tensor,
    lse: Tensor,
    temperature: float,
    need_dw: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(dhidden [N, H], dweight [V, H] or None) in the input dtypes, from grad = dL/dlogp [M]."""
    m, v, hdim = idx.numel(), weight.shape[0], weight.shape[1]
    dh_m = torch.zeros(m, hdim, device=hidden.device, dtype=torch.float32)
    # [V, H] fp32 accumulator (dh_m stands in as an unused pointer when W needs no grad)
    dw = torch.zeros(v, hdim, device=weight.device, dtype=torch.float32) if need_dw else dh_m
    if m:
        g = grad.float().contiguous()
        scaled = hidden.dtype == torch.float16 and not INTERPRET
        scale = grad_scale(g, temperature) if scaled else g  # g: an unused pointer when unscaled
        fp32_dot, precision = dot_mode(hidden.dtype)
        grid = lambda meta: (triton.cdiv(v, meta["BLOCK_V"]), triton.cdiv(m, meta["BLOCK_M"]))
        _bwd[grid](
            hidden, weight, idx, targets, lse, g, scale, dh_m, dw, m, m_bucket(m),
            *hidden.stride(), *weight.stride(), 1.0 / temperature, V=v, H=hdim,
            FP32_DOT=fp32_dot, PRECISION=precision, COMPUTE_DW=need_dw, SCALED=scaled, **_bwd_meta,
        )  # fmt: skip
    dh = torch.zeros_like(hidden)
    dh.index_copy_(0, idx, dh_m.to(hidden.dtype))
    return dh, (dw.to(weight.dtype) if need_dw else None)
