"""Triton span log-probs: forward/backward kernels, their launchers and one autograd.Function.

Both kernels read the masked rows of h through idx (no gathered copy of h), stream W in
[BLOCK_V, BLOCK_K] tiles and keep logits only as one [BLOCK_M, BLOCK_V] fp32 tile in registers:
no [M, V] buffer exists, and rows outside the mask cost nothing. Per row, only lse/logp/entropy
(fp32) reach memory. Under TRITON_INTERPRET=1 (CPU) every tile is upcast to fp32 before tl.dot,
since the interpreter's bf16 arithmetic is wrong; one fixed config there, autotuning on GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .span_loss_torch import SpanLogp

Tensor = torch.Tensor
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _logit_tile(
    h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
    H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    """acc [BLOCK_M, BLOCK_V] = h[rows] · W[offs_v]ᵀ in fp32, streamed over H in BLOCK_K slices
    (both kernels recompute logit tiles this way; the forward never stores them)."""
    acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < H
        h = tl.load(
            h_ptr + rows[:, None] * stride_hn + offs_k[None, :] * stride_hh,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + offs_v[:, None] * stride_wv + offs_k[None, :] * stride_wh,
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            acc = tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, tl.trans(w), acc)
    return acc


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
    M, stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
    V: tl.constexpr, H: tl.constexpr, S: tl.constexpr,  # constexpr: fixed per model; loop bounds
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
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
        offs_v = (pid_s * BLOCKS_PER_SPLIT + b) * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = offs_v < V  # a block past V is all padding: it must leave the state unchanged
        acc = _logit_tile(
            h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
            H, BLOCK_M, BLOCK_V, BLOCK_K, DOT_FP32,
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
    base = part_ptr + pid_s * M + offs_m
    tl.store(base, run_max, mask=row_ok)
    tl.store(base + S * M, run_sum, mask=row_ok)
    tl.store(base + 2 * S * M, run_zsum, mask=row_ok)
    tl.store(base + 3 * S * M, zy, mask=row_ok)


# Backward, per tile of masked rows × vocabulary columns, with g_t = dL/dlogp_t:
#   p = e^(z − lse)      dz = g·(onehot(y) − p)/τ      dh_t += dz·W      dW_c += dzᵀ·h
# Tiles along V add into the same dh rows and tiles along M into the same dW rows: fp32 atomics.
@triton.jit
def _span_bwd_kernel(
    h_ptr, w_ptr, idx_ptr, y_ptr, lse_ptr, g_ptr, dh_ptr, dw_ptr,  # dh [M, H], dW [V, H] fp32, zeroed
    M, stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
    V: tl.constexpr, H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)  # fastest: neighbouring programs share a W tile (L2 reuse)
    pid_v = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_m < M
    col_ok = offs_v < V
    rows = tl.load(idx_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    y = tl.load(y_ptr + offs_m, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_m, mask=row_ok, other=0.0) * inv_temp

    acc = _logit_tile(
        h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
        H, BLOCK_M, BLOCK_V, BLOCK_K, DOT_FP32,
    )  # fmt: skip
    p = tl.exp(tl.where(col_ok[None, :], acc * inv_temp, float("-inf")) - lse[:, None])
    dz = g[:, None] * (tl.where(offs_v[None, :] == y[:, None], 1.0, 0.0) - p)  # [BLOCK_M, BLOCK_V]
    dz = tl.where(row_ok[:, None], dz, 0.0)

    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < H
        w = tl.load(
            w_ptr + offs_v[:, None] * stride_wv + offs_k[None, :] * stride_wh,
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            dh = tl.dot(dz, w.to(tl.float32), input_precision="ieee")
        else:
            dh = tl.dot(dz.to(w.dtype), w)
        tl.atomic_add(
            dh_ptr + offs_m[:, None] * H + offs_k[None, :], dh, mask=row_ok[:, None] & k_ok[None, :]
        )
        if COMPUTE_DW:
            h = tl.load(
                h_ptr + rows[:, None] * stride_hn + offs_k[None, :] * stride_hh,
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if DOT_FP32:
                dw = tl.dot(tl.trans(dz), h.to(tl.float32), input_precision="ieee")
            else:
                dw = tl.dot(tl.trans(dz.to(h.dtype)), h)
            tl.atomic_add(
                dw_ptr + offs_v[:, None] * H + offs_k[None, :], dw, mask=col_ok[:, None] & k_ok[None, :]
            )


# Interpreter: one small config (numpy runs it serially). GPU: autotune over a few tile shapes,
# keyed on the model dims (not on M, which changes every step).
_FIXED = dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=32)
_GPU_CONFIGS = [
    triton.Config(dict(BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk), num_warps=w, num_stages=s)
    for bm, bv, bk, w, s in [
        (64, 128, 64, 4, 3),
        (128, 128, 64, 8, 3),
        (64, 256, 64, 8, 3),
        (128, 64, 64, 4, 4),
    ]
]
if INTERPRET:
    _fwd, _bwd, _meta = _span_fwd_kernel, _span_bwd_kernel, _FIXED
else:
    _fwd = triton.autotune(_GPU_CONFIGS, key=["V", "H"])(_span_fwd_kernel)
    _bwd = triton.autotune(_GPU_CONFIGS, key=["V", "H"], reset_to_zero=["dh_ptr", "dw_ptr"])(_span_bwd_kernel)
    _meta = {}


def _num_splits(m: int, v: int, device: torch.device) -> int:
    """V splits of the forward so that ~4 programs per SM exist even when M is small."""
    if INTERPRET or device.type != "cuda":
        return 2 if v > 2 * _FIXED["BLOCK_V"] else 1  # still exercises the split combine
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(4 * sms // max(1, triton.cdiv(m, 64)), triton.cdiv(v, 256), 64))
    return 1 << (want.bit_length() - 1)  # a power of two: S is constexpr, few recompiles


def triton_forward(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, lse), each [M] fp32, for the rows idx [M] of hidden with targets [M]."""
    m, v, hdim = idx.numel(), weight.shape[0], weight.shape[1]
    s = _num_splits(m, v, hidden.device)
    part = torch.full((4, s, m), float("nan"), device=hidden.device, dtype=torch.float32)  # poisoned
    if m:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), s)
        _fwd[grid](
            hidden,
            weight,
            idx,
            targets,
            part,
            m,
            *hidden.stride(),
            *weight.stride(),
            1.0 / temperature,
            V=v,
            H=hdim,
            S=s,
            DOT_FP32=INTERPRET or hidden.dtype == torch.float32,
            **_meta,
        )
    mx, run_sum, run_zsum, zy = part
    top = mx.amax(0)  # [M]
    scale = torch.exp(mx - top)  # [S, M]
    total = (run_sum * scale).sum(0)
    lse = top + torch.log(total)
    return zy.sum(0) - lse, lse - (run_zsum * scale).sum(0) / total, lse


def triton_backward(
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
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(v, meta["BLOCK_V"]))
        _bwd[grid](
            hidden,
            weight,
            idx,
            targets,
            lse,
            grad.float().contiguous(),
            dh_m,
            dw,
            m,
            *hidden.stride(),
            *weight.stride(),
            1.0 / temperature,
            V=v,
            H=hdim,
            DOT_FP32=INTERPRET or hidden.dtype == torch.float32,
            COMPUTE_DW=need_dw,
            **_meta,
        )
    dh = torch.zeros_like(hidden)
    dh.index_copy_(0, idx, dh_m.to(hidden.dtype))
    return dh, (dw.to(weight.dtype) if need_dw else None)


def triton_span_logp(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Differentiable logp [M] and detached entropy [M] (fp32) at rows idx of hidden."""
    return SpanLogp.apply(triton_forward, triton_backward, hidden, weight, idx, targets, temperature)
