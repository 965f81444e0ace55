"""Naive span GRPO loss with materialised logits: the test oracle and the benchmark baseline.

Run with `compute_dtype=torch.float64` it is the ground truth; run in the input dtype it is the
"naive reference in the same dtype" whose error sets the tolerance for the fused paths.
It builds the full [M, V] logits, so keep it to test and benchmark shapes.
"""

from __future__ import annotations

import torch

from .loss_terms import REDUCTIONS, SpanLossOutput, reduce_span_loss

Tensor = torch.Tensor


def naive_logp_entropy(
    hidden: Tensor,
    weight: Tensor,
    idx: Tensor,
    targets: Tensor,
    temperature: float,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """logp [M] and entropy [M] at the rows `idx` of hidden, through full [M, V] logits."""
    h = hidden.index_select(0, idx).to(compute_dtype)  # [M, H]
    z = (h @ weight.to(compute_dtype).T) / temperature  # [M, V]
    logprobs = torch.log_softmax(z, dim=-1)
    logp = logprobs.gather(1, targets.index_select(0, idx)[:, None]).squeeze(1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy.detach()


def _pick(x: Tensor | None, idx: Tensor, n: int) -> Tensor | None:
    """Per-token input given for all N positions or for the M masked ones -> [M]."""
    if x is None:
        return None
    return x.index_select(0, idx) if x.shape[0] == n and n != idx.numel() else x


def naive_span_grpo_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    temperature: float = 1.0,
    loss_type: str = "dapo",
    seq_ids: Tensor | None = None,
    num_items: float | Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> SpanLossOutput:
    """Same contract as `span_grpo_loss`, no input checks; the per-token math runs in compute_dtype."""
    dt = compute_dtype or hidden.dtype
    n = hidden.shape[0]
    idx = mask.nonzero().squeeze(1)  # [M]  host-device sync
    logp, entropy = naive_logp_entropy(hidden, weight, idx, targets, temperature, dt)
    cast = lambda x: None if x is None else x.to(dt)
    return reduce_span_loss(
        logp,
        entropy,
        adv=advantages.index_select(0, idx).to(dt),
        old_logp=cast(_pick(old_logp, idx, n)),
        ref_logp=cast(_pick(ref_logp, idx, n)),
        seq=None if seq_ids is None else seq_ids.index_select(0, idx),
        beta=beta,
        eps_low=eps_low,
        eps_high=eps_high,
        weights=REDUCTIONS[loss_type],
        num_items=num_items,
    )
