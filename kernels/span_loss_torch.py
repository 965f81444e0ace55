"""Chunked torch path of the span log-probs: the CPU fallback and the GPU path without Triton.

Only the M masked rows are touched. They are processed ROWS at a time and the vocabulary BLOCK_V
columns at a time with an online log-sum-exp, so the largest temporary is one [rows, block_v]
fp32 tile (a few copies of it), never [M, V]. The backward recomputes each tile from h and W
(no logits are saved) and accumulates dW in fp32.

    z = h·Wᵀ/τ     lse = logsumexp(z)     logp = z[y] − lse     entropy = lse − Σ softmax(z)·z
    dz = g·(onehot(y) − softmax(z))/τ     dh = dz·W     dW = dzᵀ·h        (g = dL/dlogp)
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# Tile budget in fp32 elements: 2**22 = 16 MiB per [rows, block_v] tile. The forward holds ~3
# such tiles and the backward ~4, so ~64 MiB whatever M and V are; big enough that the matmuls
# (rows × H × block_v) stay efficient on CPU. Module-level so tests can shrink it.
TILE_ELEMS = 2**22
BLOCK_V = 32768  # vocabulary columns per tile; whole V when smaller


def _tiles(m: int, v: int) -> tuple[int, int]:
    """(rows, block_v) of one tile."""
    block_v = min(v, BLOCK_V)
    return max(1, min(m, TILE_ELEMS // block_v)), block_v


def _logits(h: Tensor, w: Tensor, inv_temp: float) -> Tensor:
    """[r, H] × [b, H] -> [r, b] fp32 logits (operands upcast per tile: fp32 accumulation)."""
    z = h.float() @ w.float().T
    return z.mul_(inv_temp) if inv_temp != 1.0 else z


def chunked_forward(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, lse), each [M] fp32, for the rows idx [M] of hidden with targets [M]."""
    m, v = idx.numel(), weight.shape[0]
    inv_temp = 1.0 / temperature
    rows, block_v = _tiles(m, v)
    f32 = dict(device=hidden.device, dtype=torch.float32)
    logp, entropy, lse = (torch.empty(m, **f32) for _ in range(3))
    for r0 in range(0, m, rows):
        h = hidden.index_select(0, idx[r0 : r0 + rows])  # [r, H]
        y = targets[r0 : r0 + rows]
        r = h.shape[0]
        run_max = torch.full((r,), -float("inf"), **f32)
        run_sum = torch.zeros(r, **f32)  # Σ exp(z − run_max)
        run_zsum = torch.zeros(r, **f32)  # Σ exp(z − run_max)·z
        zy = torch.zeros(r, **f32)
        for v0 in range(0, v, block_v):
            z = _logits(h, weight[v0 : v0 + block_v], inv_temp)  # [r, b]
            new_max = torch.maximum(run_max, z.amax(1))
            scale = torch.exp(run_max - new_max)
            in_block = (y >= v0) & (y < v0 + z.shape[1])
            zy += torch.where(in_block, z.gather(1, (y - v0).clamp(0, z.shape[1] - 1)[:, None])[:, 0], 0.0)
            e = (z - new_max[:, None]).exp_()  # [r, b]
            run_sum = run_sum * scale + e.sum(1)
            run_zsum = run_zsum * scale + torch.linalg.vecdot(e, z)
            run_max = new_max
        lse_c = run_max + torch.log(run_sum)
        lse[r0 : r0 + r] = lse_c
        logp[r0 : r0 + r] = zy - lse_c
        entropy[r0 : r0 + r] = lse_c - run_zsum / run_sum
    return logp, entropy, lse


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
    m, v = idx.numel(), weight.shape[0]
    inv_temp = 1.0 / temperature
    rows, block_v = _tiles(m, v)
    # [V, H] fp32 accumulator: summing M row-tiles in bf16 would lose the small contributions.
    dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_dw else None
    dh = torch.zeros_like(hidden)
    for r0 in range(0, m, rows):
        rid = idx[r0 : r0 + rows]
        h = hidden.index_select(0, rid).float()  # [r, H]
        y = targets[r0 : r0 + rows]
        g = grad[r0 : r0 + rows].float() * inv_temp  # [r]
        lse_c = lse[r0 : r0 + rows]
        dh_c = torch.zeros_like(h)
        for v0 in range(0, v, block_v):
            w = weight[v0 : v0 + block_v].float()  # [b, H]
            z = _logits(h, w, inv_temp)
            dz = z.sub_(lse_c[:, None]).exp_().mul_(-g[:, None])  # −g·softmax(z)/τ, in place: [r, b]
            in_block = (y >= v0) & (y < v0 + w.shape[0])
            rr = in_block.nonzero().squeeze(1)
            dz[rr, y[rr] - v0] += g[rr]  # + g·onehot(y)/τ
            dh_c.addmm_(dz, w)
            if dw is not None:
                dw[v0 : v0 + block_v].addmm_(dz.T, h)
        dh.index_copy_(0, rid, dh_c.to(hidden.dtype))
    return dh, None if dw is None else dw.to(weight.dtype)


class ChunkedSpanLogp(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], idx [M], targets [M], τ) -> (logp [M], entropy [M]) fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, idx, targets, temperature):  # type: ignore[override]
        logp, entropy, lse = chunked_forward(hidden, weight, idx, targets, temperature)
        ctx.save_for_backward(hidden, weight, idx, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):  # type: ignore[override]
        hidden, weight, idx, targets, lse = ctx.saved_tensors
        need_dw = ctx.needs_input_grad[1]
        dh, dw = chunked_backward(grad_logp, hidden, weight, idx, targets, lse, ctx.temperature, need_dw)
        return dh, dw, None, None, None


def torch_span_logp(
    hidden: Tensor, weight: Tensor, idx: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Differentiable logp [M] and detached entropy [M] (fp32) at rows idx of hidden."""
    return ChunkedSpanLogp.apply(hidden, weight, idx, targets, temperature)
