"""The test oracle: the span GRPO loss written out from TRL's definitions, sharing no code with
the implementation (`loss_terms.py`, `span_loss*.py`).

It materialises the full logits of every position ([N, V]), takes log_softmax, and lays the masked
tokens out per sequence in TRL's padded `[sequences, tokens]` form with a completion mask, then
reduces exactly as `trl.GRPOTrainer._compute_loss` does for each loss type. Run with
`compute_dtype=torch.float64` it is the ground truth; in the input dtype it is the "naive reference
in the same dtype" whose error sets the tolerance for the fused paths. Keep it to test shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Tensor = torch.Tensor


class ReferenceOutput(NamedTuple):
    loss: Tensor  # []
    logp: Tensor  # [M] log-prob of each masked target, in mask order (detached)
    kl: Tensor  # [M] k3 KL per masked token (zeros without ref_logp; detached)
    clip_frac: Tensor  # [] TRL's "clip_ratio/region_mean"
    entropy: Tensor  # [M] entropy of the tempered distribution (detached)


def _masked(x: Tensor | None, mask: Tensor) -> Tensor | None:
    """A per-token input given for all N positions or for the M masked ones -> [M]."""
    if x is None:
        return None
    return x[mask] if x.shape[0] == mask.shape[0] and x.shape[0] != int(mask.sum()) else x


def _padded(values: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
    """[M] values with their sequence ids -> ([S, T] right-padded per sequence, [S, T] mask).
    Built with index_put, so the graph back to `values` survives even when M = 0."""
    ids = sorted(set(seq.tolist()))
    row_of = {s: i for i, s in enumerate(ids)}
    used = [0] * len(ids)
    rows, cols = [], []
    for s in seq.tolist():
        r = row_of[s]
        rows.append(r)
        cols.append(used[r])
        used[r] += 1
    width = max(used, default=0)
    dev = values.device
    at = (torch.tensor(rows, dtype=torch.long, device=dev), torch.tensor(cols, dtype=torch.long, device=dev))
    out = values.new_zeros(len(ids), width).index_put(at, values)
    mask = values.new_zeros(len(ids), width).index_put(at, torch.ones_like(values.detach()))
    return out, mask


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
    is_weights: Tensor | None = None,
    bias_correction_kl: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> ReferenceOutput:
    """Same contract as `span_grpo_loss`. `num_items` plays the role of TRL's step-wide
    normaliser: grpo's number of sequences, dr_grpo's sequences × max completion length, dapo's
    completion tokens (`num_items_in_batch`); bnpo ignores it, as TRL does."""
    dt = compute_dtype or hidden.dtype
    logits = hidden.to(dt) @ weight.to(dt).T / temperature  # [N, V], every position
    logprobs = torch.log_softmax(logits, dim=-1)
    safe = torch.where(mask, targets, torch.zeros_like(targets)).long()
    token_logp = logprobs.gather(1, safe[:, None]).squeeze(1)  # [N]
    entropy = -(logprobs.exp() * logprobs).sum(-1)  # [N]
    logp = token_logp[mask]  # [M]
    adv = advantages[mask].to(dt)
    old = logp.detach() if old_logp is None else _masked(old_logp, mask).to(dt)

    # TRL: coef_1 = exp(logp − old); coef_2 = clamp(coef_1, 1 − ε_low, 1 + ε_high)
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if is_weights is not None:  # TRL: per_token_loss * importance_sampling_ratio, before the KL
        per_token = per_token * _masked(is_weights, mask).to(dt)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        ref = _masked(ref_logp, mask).to(dt)
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        kl_term = kl * coef_1 if bias_correction_kl else kl  # TRL's use_bias_correction_kl
        if beta != 0:
            per_token = per_token + beta * kl_term

    seq = torch.zeros_like(logp, dtype=torch.long) if seq_ids is None else seq_ids[mask]
    if loss_type == "grpo" and seq_ids is None:
        raise ValueError("loss_type='grpo' needs seq_ids")
    L, cmask = _padded(per_token, seq)  # [S, T]
    n_seq = L.shape[0]
    if loss_type == "grpo":
        # ((L * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean() over this batch's sequences
        per_seq = (L * cmask).sum(-1) / cmask.sum(-1).clamp(min=1)
        loss = per_seq.sum() / (num_items if num_items is not None else max(n_seq, 1))
    elif loss_type == "bnpo":
        loss = (L * cmask).sum() / cmask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        # (L * mask).sum() / (B * max_completion_length); the local default is the widest span
        denom = num_items if num_items is not None else max(n_seq * L.shape[1], 1)
        loss = (L * cmask).sum() / denom
    elif loss_type == "dapo":
        denom = num_items if num_items is not None else cmask.sum().clamp(min=1)
        loss = (L * cmask).sum() / denom
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")

    low = (coef_1 < 1 - eps_low) & (adv < 0)
    high = (coef_1 > 1 + eps_high) & (adv > 0)
    clip_frac = (low | high).to(dt).mean() if logp.numel() else torch.zeros((), dtype=dt)
    return ReferenceOutput(loss, logp.detach(), kl.detach(), clip_frac.detach(), entropy[mask].detach())
