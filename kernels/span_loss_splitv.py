"""Split-V backward of the span log-probs: a Triton kernel writes dz per vocabulary chunk, cuBLAS
does the two products. No atomics, so the result is deterministic; the time is matmuls.

For each chunk c of Vc vocabulary columns, with g_t = dL/dlogp_t and the forward's saved lse:

    dz_c = g/τ · (onehot(y)_c − e^(h·W_cᵀ/τ − lse))      [M, Vc]   (Triton: logits recomputed in fp32)
    dh  += dz_c · W_c                                       [M, H]    (matmul, fp32 accumulator)
    dW_c = dz_cᵀ · h                                        [Vc, H]   (matmul, written once: rows of W
                                                                       belong to one chunk only)

FLOPs: 2·M·H·V (recompute) + 2·M·H·V (dh) + 2·M·H·V (dW): with the forward's 2·M·H·V, the 8·M·H·V
matmul floor of a recompute design. Extra memory: one dz chunk, M·Vc·2 bytes (bf16/fp16), bounded
by DZ_BYTES whatever M and V are, plus the gathered rows h[idx] [M, H] for the dW product.
dz is written in the model's dtype: bf16 has fp32's range; fp16 does not, so for fp16 dz is scaled
by a power of two bringing max|g/τ| to 1 (`grad_scale`) and the products are unscaled after.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRET, autotuned, dot_mode, grad_scale, logit_tile, m_bucket

Tensor = torch.Tensor

# One dz chunk at most this many bytes: 128 MiB is ~4 % of an 80 GB GPU's HBM time per pass at
# M = 4096 (Vc = 16384), large enough that each chunk's matmuls run at full rate (K or N ≥ 4096).
DZ_BYTES = 2**27
_MIN_CHUNK = 256


@triton.jit
def _span_dz_kernel(
    h_ptr, w_ptr, idx_ptr, y_ptr, lse_ptr, g_ptr, scale_ptr, dz_ptr,  # dz [M, VC] (row stride stride_dz)
    M, M_BUCKET, v0, VC, stride_hn, stride_hh, stride_wv, stride_wh, stride_dz, inv_temp,
    V: tl.constexpr, H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    pid_v = tl.program_id(0)  # row-block-major: programs in flight share h rows, stream W
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # column within the chunk
    offs_v = v0 + offs_c.to(tl.int64)
    row_ok = offs_m < M
    col_ok = (offs_c < VC) & (offs_v < V)
    rows = tl.load(idx_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    y = tl.load(y_ptr + offs_m, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_m, mask=row_ok, other=0.0) * inv_temp
    if SCALED:
        g = g * tl.load(scale_ptr)

    acc = logit_tile(
        h_ptr, w_ptr, rows, row_ok, offs_v, col_ok, stride_hn, stride_hh, stride_wv, stride_wh,
        H, BLOCK_M, BLOCK_V, BLOCK_K, FP32_DOT, PRECISION,
    )  # fmt: skip
    p = tl.exp(tl.where(col_ok[None, :], acc * inv_temp, float("-inf")) - lse[:, None])
    dz = g[:, None] * (tl.where(offs_v[None, :] == y[:, None], 1.0, 0.0) - p)  # [BLOCK_M, BLOCK_V]
    out = dz_ptr + offs_m.to(tl.int64)[:, None] * stride_dz + offs_c[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# (BLOCK_M, BLOCK_V, BLOCK_K, num_warps, num_stages), held by the same AOT compile as the forward's:
# no register spills at sm_90, within an H100's shared memory. (128, 256, 32, 8, 3) spilled 40 B
# (fp16 44 B) at sm_90 with the runtime's signature (Triton 3.6): its 128×256 fp32 tile is 128
# registers a thread before any operand; (64, 256, 32, 8, 3) keeps the wide V tile without the spill.
DZ_TILES = {
    16: [(128, 128, 64, 8, 3), (64, 128, 64, 8, 3), (64, 256, 32, 8, 3), (128, 128, 32, 8, 4)],
    32: [(64, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 64, 64, 8, 3)],
}
if INTERPRET:
    _dz, _dz_meta = _span_dz_kernel, dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=32)
else:
    _dz, _dz_meta = autotuned(_span_dz_kernel, DZ_TILES, key=["V", "H", "PRECISION", "SCALED"]), {}


def chunk_columns(m: int, v: int, elem: int) -> int:
    """Vc: vocabulary columns per chunk so that one [M, Vc] dz buffer stays within DZ_BYTES."""
    vc = max(_MIN_CHUNK, DZ_BYTES // max(1, m * elem)) // _MIN_CHUNK * _MIN_CHUNK
    return min(v, vc)


def dw_chunk(dz: Tensor, h_m: Tensor, scale: Tensor | None) -> Tensor:
    """dW_c = dz_cᵀ·h [c, H] with an fp32 output, unscaled by 1/scale (fp16). A 16-bit output would
    overflow: a target token repeated over many rows makes its dW row ≈ s·Σ_t h_t, past fp16's 65504
    for a few hundred rows once the scale s has brought max|g/τ| to 1. The operands stay 16-bit (tensor
    cores); only the accumulator reaches memory as fp32, then the true dW is cast to W's dtype."""
    if dz.is_cuda and dz.dtype in (torch.float16, torch.bfloat16):
        out = torch.mm(dz.T, h_m, out_dtype=torch.float32)  # cuBLAS: 16-bit in, fp32 out
    else:
        out = dz.T.float() @ h_m.float()
    return out * (1.0 / scale) if scale is not None else out


def splitv_backward(
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
    m, (v, hdim) = idx.numel(), weight.shape
    dh = torch.zeros_like(hidden)
    dw = torch.zeros_like(weight) if need_dw else None
    if not m:
        return dh, dw
    # The interpreter writes and multiplies fp32 (its 16-bit arithmetic is unreliable); on GPU dz
    # takes the model dtype, so both products run on the tensor cores.
    mm_dtype = torch.float32 if INTERPRET else hidden.dtype
    scaled = mm_dtype == torch.float16
    g = grad.float().contiguous()
    scale = grad_scale(g, temperature) if scaled else g  # g: an unused pointer when unscaled
    fp32_dot, precision = dot_mode(hidden.dtype)
    h_m = hidden.index_select(0, idx).to(mm_dtype)  # [M, H] contiguous, for dz_cᵀ·h
    dh_m = torch.zeros(m, hdim, device=hidden.device, dtype=torch.float32)  # sums over chunks
    vc = chunk_columns(m, v, torch.tensor([], dtype=mm_dtype).element_size())
    dz_buf = torch.empty(m, vc, device=hidden.device, dtype=mm_dtype)
    for v0 in range(0, v, vc):
        c = min(vc, v - v0)
        dz = dz_buf[:, :c]
        grid = lambda meta, c=c: (triton.cdiv(c, meta["BLOCK_V"]), triton.cdiv(m, meta["BLOCK_M"]))
        _dz[grid](
            hidden, weight, idx, targets, lse, g, scale, dz, m, m_bucket(m), v0, c,
            *hidden.stride(), *weight.stride(), dz.stride(0), 1.0 / temperature, V=v, H=hdim,
            FP32_DOT=fp32_dot, PRECISION=precision, SCALED=scaled, **_dz_meta,
        )  # fmt: skip
        w_c = weight[v0 : v0 + c].to(mm_dtype)  # a view on GPU (same dtype)
        part = dz @ w_c  # [M, H] in mm_dtype, fp32 accumulation inside the matmul
        dh_m += part * (1.0 / scale) if scaled else part
        if dw is not None and not scaled and dw.dtype == mm_dtype:
            torch.mm(dz.T, h_m, out=dw[v0 : v0 + c])  # [c, H], straight into its rows of dW
        elif dw is not None:
            dw[v0 : v0 + c] = dw_chunk(dz, h_m, scale if scaled else None)
    dh.index_copy_(0, idx, dh_m.to(hidden.dtype))
    return dh, dw
