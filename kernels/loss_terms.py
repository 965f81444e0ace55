"""Per-token GRPO loss terms and reductions, shared by every implementation.

These work on the M masked positions only ([M] vectors), so they are cheap torch ops; the
implementations differ only in how they get `logp` (and its gradient) out of h·Wᵀ.

Every reduction is linear in the per-token loss L: loss = Σ_t w_t·L_t with weights w that do
not depend on the model. So a loss type is one function that returns w, picked once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class SpanLossOutput:
    """Result of `span_grpo_loss`. Everything but `loss` is detached."""

    loss: Tensor  # [] differentiable w.r.t. hidden and weight
    logp: Tensor  # [M] fp32 log-prob of each masked target
    kl: Tensor  # [M] fp32 k3 KL to the reference (zeros without ref_logp)
    clip_frac: Tensor  # [] fraction of masked tokens whose ratio is clipped (TRL's definition)
    entropy: Tensor  # [M] fp32 entropy of the tempered distribution at each masked position


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, adv: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """PPO/GRPO clipped objective per token: (−min(r·A, clip(r)·A), clip-active mask). All [M]."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    # TRL: the clip is "active" when it takes the gradient away in the direction A pushes.
    active = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
    return loss, active


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token: e^(ref−logp) − (ref−logp) − 1 ≥ 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def per_token_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    adv: Tensor,
    beta: float,
    eps_low: float,
    eps_high: float,
    is_weights: Tensor | None = None,
    bias_correction_kl: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """L_t, kl_t (detached) and the clip mask for the masked tokens. All [M].

    is_weights [M]: importance weights correcting for the sampler/learner mismatch; like TRL they
    scale the clipped surrogate only, not the KL term. bias_correction_kl: TRL's
    `use_bias_correction_kl`, the KL term times the ratio r_t (with its gradient: at r ≡ 1 the
    value is unchanged but the gradient gains kl_t·∇logp_t)."""
    old = logp.detach() if old_logp is None else old_logp
    loss, active = clipped_surrogate(logp, old, adv, eps_low, eps_high)
    if is_weights is not None:
        loss = loss * is_weights
    if ref_logp is None:
        return loss, torch.zeros_like(logp).detach(), active
    kl = k3_kl(logp, ref_logp)
    if beta > 0:
        loss = loss + beta * (kl * torch.exp(logp - old) if bias_correction_kl else kl)
    return loss, kl.detach(), active


# --- reductions: loss = Σ w·L; each returns w [M] (fp64, no grad) -----------------------------
# seq: [M] sequence id of each masked token (None without seq_ids); num_items: global denominator.

Weights = Callable[[int, "Tensor | None", "float | Tensor | None", torch.device], Tensor]


def _seq_counts(seq: Tensor) -> tuple[Tensor, Tensor]:
    """Masked-token count per sequence [S] and, per token, the index of its sequence [M]."""
    _, inv, counts = torch.unique(seq, return_inverse=True, return_counts=True)
    return counts, inv


def _uniform(m: int, denom: float | Tensor, device: torch.device) -> Tensor:
    return torch.ones(m, device=device, dtype=torch.float64) / denom


def grpo_weights(
    m: int, seq: Tensor | None, num_items: float | Tensor | None, device: torch.device
) -> Tensor:
    """Mean over each sequence's masked tokens, summed over sequences, / num_items (#sequences)."""
    if seq is None:
        raise ValueError("loss_type='grpo' needs seq_ids (its per-sequence mean needs sequence bounds)")
    if m == 0:
        return torch.zeros(0, device=device, dtype=torch.float64)
    counts, inv = _seq_counts(seq)
    denom = counts.numel() if num_items is None else num_items
    return 1.0 / counts[inv].to(torch.float64) / denom


def bnpo_weights(
    m: int, seq: Tensor | None, num_items: float | Tensor | None, device: torch.device
) -> Tensor:
    """Sum over the batch's masked tokens / their local count (TRL's bnpo ignores num_items)."""
    return _uniform(m, max(m, 1), device)


def dr_grpo_weights(
    m: int, seq: Tensor | None, num_items: float | Tensor | None, device: torch.device
) -> Tensor:
    """Sum / num_items (#sequences × max completion length); default from the local spans."""
    if num_items is None:
        if seq is None or m == 0:  # no bounds known: one sequence of m tokens
            num_items = max(m, 1)
        else:
            counts, _ = _seq_counts(seq)
            num_items = counts.numel() * int(counts.max())  # host-device sync
    return _uniform(m, num_items, device)


def dapo_weights(
    m: int, seq: Tensor | None, num_items: float | Tensor | None, device: torch.device
) -> Tensor:
    """Sum / num_items (global masked-token count); default: the local count."""
    return _uniform(m, max(m, 1) if num_items is None else num_items, device)


@dataclass(frozen=True)
class LossType:
    """Everything one loss type decides, in one place (TRL's definitions):

    weights       w [M] of one micro-batch: loss = Σ_t w_t·L_t
    step_items    the whole optimiser step's denominator from (sequences, span tokens, the span-length
                  cap), so that micro-batch (and rank) losses add up to the step's; None: local only
    mean_of_micro_batches  the step loss is the mean of the micro-batch losses (bnpo normalises each
                  micro-batch on its own), not their sum
    """

    name: str
    weights: Weights
    step_items: Callable[[int, int, int], float | None]
    mean_of_micro_batches: bool = False


LOSS_TYPES: dict[str, LossType] = {
    t.name: t
    for t in (
        LossType("grpo", grpo_weights, lambda seqs, tokens, cap: seqs),
        LossType("bnpo", bnpo_weights, lambda seqs, tokens, cap: None, mean_of_micro_batches=True),
        LossType("dr_grpo", dr_grpo_weights, lambda seqs, tokens, cap: seqs * cap),
        LossType("dapo", dapo_weights, lambda seqs, tokens, cap: tokens),
    )
}


def reduce_span_loss(
    logp: Tensor,
    entropy: Tensor,
    *,
    adv: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    seq: Tensor | None,
    beta: float,
    eps_low: float,
    eps_high: float,
    weights: Weights,
    num_items: float | Tensor | None,
    is_weights: Tensor | None = None,
    bias_correction_kl: bool = False,
) -> SpanLossOutput:
    """From logp [M] (carrying the graph back to h and W) to the scalar loss and the log outputs."""
    loss_t, kl, active = per_token_loss(
        logp, old_logp, ref_logp, adv, beta, eps_low, eps_high, is_weights, bias_correction_kl
    )
    w = weights(logp.numel(), seq, num_items, logp.device)
    loss = (loss_t * w.to(loss_t.dtype)).sum()  # an empty sum is 0 and keeps the graph (zero grads for M = 0)
    clip_frac = active.float().mean() if active.numel() else torch.zeros((), device=logp.device)
    return SpanLossOutput(loss, logp.detach(), kl, clip_frac, entropy.detach())
