"""Chunked torch path of the span log-probs: the CPU fallback and the GPU path without Triton.

Only the M masked rows are touched. The vocabulary is walked block_v columns at a time (outer loop,
an online log-sum-exp per row carries across blocks), the rows `rows` at a time (inner loop), so the
largest temporary is a [rows, block_v] fp32 tile, never [M, V]. The backward recomputes each tile
from h and W (no logits are saved) and accumulates dh and dW in fp32.

    z = h·Wᵀ/τ     lse = logsumexp(z)     logp = z[y] − lse     entropy = lse − Σ softmax(z)·z
    dz = g·(onehot(y) − softmax(z))/τ     dh = dz·W     dW = dzᵀ·h        (g = dL/dlogp)
"""

from __future__ import annotations

import torch

from .span_logp_function import SpanLogp

Tensor = torch.Tensor

# Tile budget in fp32 elements: 2**22 = 16 MiB per [rows, block_v] logit tile; the forward and the
# backward each hold ~2 such tiles, whatever M and V are. 8192 columns × 512 rows measured as fast as
# any larger tile on 2 CPU cores (4096×49152×576, 25 % masked); the W block is upcast to fp32 once
# per call (V blocks are the outer loop), capped at W_BLOCK_ELEMS = 2**23 (32 MiB) for wide H.
# Module-level so tests can shrink them.
TILE_ELEMS = 2**22
W_BLOCK_ELEMS = 2**23
BLOCK_V = 8192  # at most this many vocabulary columns per block


def _tiles(m: int, v: int, h: int) -> tuple[int, int]:
    """(rows, block_v) of one logit tile."""
    block_v = min(v, BLOCK_V, max(256, W_BLOCK_ELEMS // h))
    return max(1, min(m, TILE_ELEMS // block_v)), block_v


def chunked_forward(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, lse), each [M] fp32, for the rows idx [M] of hidden with targets [M]."""
    m, (v, hdim) = idx.numel(), weight.shape
    rows, block_v = _tiles(m, v, hdim)
    f32 = dict(device=hidden.device, dtype=torch.float32)
    h_all = hidden.index_select(0, idx)  # [M, H] input dtype
    # online log-sum-exp state per row, carried across V blocks: all [M]
    run_max = torch.full((m,), -float("inf"), **f32)
    run_sum = torch.zeros(m, **f32)  # Σ exp(z − run_max)
    run_zsum = torch.zeros(m, **f32)  # Σ exp(z − run_max)·z
    zy = torch.zeros(m, **f32)
    for v0 in range(0, v, block_v):
        w = weight[v0 : v0 + block_v].float()  # [b, H]
        b = w.shape[0]
        for r0 in range(0, m, rows):
            sl = slice(r0, r0 + rows)
            z = h_all[sl].float() @ w.T  # [r, b]
            if temperature != 1.0:
                z.mul_(1.0 / temperature)
            y = targets[sl] - v0
            hit = (y >= 0) & (y < b)
            zy[sl] += torch.where(hit, z.gather(1, y.clamp(0, b - 1)[:, None])[:, 0], 0.0)
            new_max = torch.maximum(run_max[sl], z.amax(1))
            scale = torch.exp(run_max[sl] - new_max)
            e = (z - new_max[:, None]).exp_()  # [r, b]
            run_sum[sl] = run_sum[sl] * scale + e.sum(1)
            run_zsum[sl] = run_zsum[sl] * scale + torch.linalg.vecdot(e, z)
            run_max[sl] = new_max
    lse = run_max + torch.log(run_sum)
    return zy - lse, lse - run_zsum / run_sum, lse


def chunked_backward(
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
    rows, block_v = _tiles(m, v, hdim)
    h_all = hidden.index_select(0, idx)  # [M, H]
    g_all = grad.float() / temperature  # [M]
    # fp32 accumulators: summing many tiles in bf16 would lose the small contributions
    dh_m = torch.zeros(m, hdim, device=hidden.device, dtype=torch.float32)  # [M, H]
    dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_dw else None
    for v0 in range(0, v, block_v):
        w = weight[v0 : v0 + block_v].float()  # [b, H]
        b = w.shape[0]
        for r0 in range(0, m, rows):
            sl = slice(r0, r0 + rows)
            h = h_all[sl].float()  # [r, H]
            g = g_all[sl]
            z = h @ w.T
            if temperature != 1.0:
                z.mul_(1.0 / temperature)
            dz = z.sub_(lse[sl, None]).exp_().mul_(-g[:, None])  # −g·softmax(z)/τ, in place: [r, b]
            y = targets[sl] - v0
            hit = ((y >= 0) & (y < b)).nonzero().squeeze(1)
            dz[hit, y[hit]] += g[hit]  # + g·onehot(y)/τ
            dh_m[sl].addmm_(dz, w)
            if dw is not None:
                dw[v0 : v0 + b].addmm_(dz.T, h)
    dh = torch.zeros_like(hidden)
    dh.index_copy_(0, idx, dh_m.to(hidden.dtype))
    return dh, None if dw is None else dw.to(weight.dtype)


def torch_span_logp(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Differentiable logp [M] and detached entropy [M] (fp32) at rows idx of hidden."""
    return SpanLogp.apply(chunked_forward, chunked_backward, hidden, weight, idx, targets, temperature)
