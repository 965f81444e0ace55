"""Per-token GRPO loss terms and reductions, shared by every implementation.

These work on the M masked positions only ([M] vectors), so they are cheap torch ops; the
implementations differ only in how they get `logp` (and its gradient) out of h·Wᵀ.

A loss type (TRL 1.16's `loss_type`) is two choices, made once in its `LossType` record:

  objective   the policy term per token from the importance ratio r (token level: e^(logp − old);
              sequence level, GSPO: e^(mean over the sequence's span of logp − old), one per sequence)
  weights     w [M]: loss = Σ_t w_t·L_t, with w independent of the model (every reduction is linear)

    clipped (grpo, bnpo, dr_grpo, dapo, luspo)   −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)
    cispo                                       −sg(min(r, ε_high))·A·logp
    sapo                                        −σ(τ_A·(r − 1))·4/τ_A·A          τ_A = τ+ if A > 0 else τ−
    vespo                                       −sg(φ(w_s))·A·logp, φ(w) = e^λ·w^k·e^(−λw), w_s = Π_t r_t
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
RATIO_LEVELS = ("token", "sequence")


@dataclass
class SpanLossOutput:
    """Result of `span_grpo_loss`. Everything but `loss` is detached."""

    loss: Tensor  # [] differentiable w.r.t. hidden and weight
    logp: Tensor  # [M] fp32 log-prob of each masked target
    kl: Tensor  # [M] fp32 k3 KL to the reference (zeros without ref_logp)
    clip_frac: Tensor  # [] fraction of masked tokens whose ratio is clipped (TRL's definition)
    entropy: Tensor  # [M] fp32 entropy of the tempered distribution at each masked position


@dataclass(frozen=True, kw_only=True)
class ObjectiveParams:
    """The knobs of the policy objectives (TRL's names and defaults)."""

    eps_low: float = 0.2
    """Clip below at 1 − eps_low (clipped objectives)."""
    eps_high: float = 0.2
    """Clip above at 1 + eps_high (clipped objectives); cispo: the cap ε_max on the ratio itself."""
    delta: float | None = None
    """TRL's `delta` (INTELLECT-2's two-sided clip): the unclipped ratio is capped at delta; None: off."""
    sapo_temperature_pos: float = 1.0
    """τ+ of sapo's gate, for tokens with A > 0."""
    sapo_temperature_neg: float = 1.05
    """τ− of sapo's gate, for tokens with A ≤ 0."""
    vespo_k_pos: float = 2.0
    """k of vespo's gamma weight for A ≥ 0 (power on w)."""
    vespo_lambda_pos: float = 3.0
    """λ of vespo's gamma weight for A ≥ 0 (decay in w)."""
    vespo_k_neg: float = 3.0
    """k of vespo's gamma weight for A < 0."""
    vespo_lambda_neg: float = 2.0
    """λ of vespo's gamma weight for A < 0."""


@dataclass(frozen=True)
class Span:
    """What a per-token objective sees, all [M] over the masked tokens."""

    logp: Tensor  # differentiable
    old: Tensor  # detached
    adv: Tensor
    ratio: Tensor  # r at the chosen level (differentiable; per-sequence values repeated per token)
    seq: Tensor | None  # [M] index of each token's sequence in 0..S-1 (None without seq_ids)
    is_weights: Tensor | None  # sampler/learner correction weights


def _seq_index(seq: Tensor) -> tuple[Tensor, Tensor]:
    """Masked-token count per sequence [S] and, per token, the index of its sequence [M]."""
    _, inv, counts = torch.unique(seq, return_inverse=True, return_counts=True)
    return counts, inv


def _per_seq_sum(x: Tensor, inv: Tensor) -> Tensor:
    """Σ of x [M] over each sequence's tokens -> [S] (differentiable)."""
    return x.new_zeros(int(inv.max()) + 1 if inv.numel() else 0).index_add(0, inv, x)


def importance_ratio(logp: Tensor, old: Tensor, seq: Tensor | None, level: str) -> Tensor:
    """r [M]: token level e^(logp − old); sequence level (GSPO) e^(mean_s(logp − old)) of each
    token's sequence s (sequence ids, so packed and shared-prefix rows are handled alike)."""
    log_ratio = logp - old
    if level == "token":
        return torch.exp(log_ratio)
    if seq is None:
        raise ValueError("ratio_level='sequence' needs seq_ids (one ratio per sequence)")
    counts, inv = _seq_index(seq)
    per_seq = _per_seq_sum(log_ratio, inv) / counts.to(log_ratio.dtype)
    return torch.exp(per_seq[inv])


def _by_sign(pos: Tensor, a: float, b: float, like: Tensor) -> Tensor:
    """a where pos else b, [M] in like's dtype."""
    return torch.where(pos, like.new_tensor(a), like.new_tensor(b))


def clipped_objective(s: Span, p: ObjectiveParams) -> tuple[Tensor, Tensor]:
    """PPO/GRPO: (−min(r̃·A, clip(r)·A), clip-active mask), r̃ = min(r, delta) when delta is set."""
    clipped = torch.clamp(s.ratio, 1.0 - p.eps_low, 1.0 + p.eps_high)
    r = s.ratio if p.delta is None else torch.clamp(s.ratio, max=p.delta)
    loss = -torch.minimum(r * s.adv, clipped * s.adv)
    # TRL: the clip is "active" when it takes the gradient away in the direction A pushes.
    active = ((s.ratio < 1.0 - p.eps_low) & (s.adv < 0)) | ((s.ratio > 1.0 + p.eps_high) & (s.adv > 0))
    return loss, active


def cispo_objective(s: Span, p: ObjectiveParams) -> tuple[Tensor, Tensor]:
    """CISPO (MiniMax-M1): REINFORCE on logp, weighted by the ratio capped at ε_max, no gradient
    through the weight: −sg(min(r, ε_high))·A·logp."""
    w = torch.clamp(s.ratio, max=p.eps_high).detach()
    return -w * s.adv * s.logp, (s.ratio > p.eps_high) & (s.adv > 0)


def sapo_objective(s: Span, p: ObjectiveParams) -> tuple[Tensor, Tensor]:
    """SAPO: a sigmoid gate instead of the hard clip: −σ(τ·(r − 1))·(4/τ)·A, τ by the sign of A
    (its slope at r = 1 is A, like the plain surrogate's)."""
    tau = _by_sign(s.adv > 0, p.sapo_temperature_pos, p.sapo_temperature_neg, s.ratio)
    gate = torch.sigmoid(tau * (s.ratio - 1.0)) * (4.0 / tau)
    return -gate * s.adv, torch.zeros_like(s.adv, dtype=torch.bool)


_LOG_MIN, _LOG_MAX = math.log(1e-8), 20.0  # TRL's clamps of vespo's log-weights


@torch.no_grad()
def vespo_phi(s: Span, p: ObjectiveParams) -> Tensor:
    """φ(w_s) [M] (detached) of each token's sequence: log w_s = Σ_t clamp(logp − old, ±20)
    (+ Σ_t log is_weight_t, clamped to [log 1e-8, 20]), clamped to [log 1e-8, 20];
    log φ = λ + k·log w − λ·w with (k, λ) by the sign of A (A ≥ 0: the positive pair)."""
    if s.seq is None:
        raise ValueError("loss_type='vespo' needs seq_ids (its weight is per sequence)")
    _, inv = _seq_index(s.seq)
    log_w_t = torch.clamp(s.logp - s.old, -20.0, 20.0)
    if s.is_weights is not None:
        log_w_t = log_w_t + torch.clamp(torch.log(s.is_weights), _LOG_MIN, _LOG_MAX)
    log_w = torch.clamp(_per_seq_sum(log_w_t, inv), _LOG_MIN, _LOG_MAX)[inv]
    pos = s.adv >= 0
    k = _by_sign(pos, p.vespo_k_pos, p.vespo_k_neg, log_w)
    lam = _by_sign(pos, p.vespo_lambda_pos, p.vespo_lambda_neg, log_w).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return torch.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)


def vespo_objective(s: Span, p: ObjectiveParams) -> tuple[Tensor, Tensor]:
    """VESPO: REINFORCE on logp scaled by the detached gamma weight of the sequence ratio."""
    return -vespo_phi(s, p) * s.adv * s.logp, torch.zeros_like(s.adv, dtype=torch.bool)


Objective = Callable[[Span, ObjectiveParams], tuple[Tensor, Tensor]]


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token: e^(ref−logp) − (ref−logp) − 1 ≥ 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


# --- reductions: loss = Σ w·L; each returns w [M] (fp64, no grad) -----------------------------
# seq: [M] sequence id of each masked token (None without seq_ids); num_items: global denominator.

Weights = Callable[[int, "Tensor | None", "float | Tensor | None", torch.device], Tensor]


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
    counts, inv = _seq_index(seq)
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
            counts, _ = _seq_index(seq)
            num_items = counts.numel() * int(counts.max())  # host-device sync
    return _uniform(m, num_items, device)


def dapo_weights(
    m: int, seq: Tensor | None, num_items: float | Tensor | None, device: torch.device
) -> Tensor:
    """Sum / num_items (global masked-token count); default: the local count."""
    return _uniform(m, max(m, 1) if num_items is None else num_items, device)


def luspo_weights(
    m: int, seq: Tensor | None, num_items: float | Tensor | None, device: torch.device
) -> Tensor:
    """Sum over each sequence's tokens (a length-weighted sequence loss), / num_items (#sequences)."""
    if num_items is None:
        if seq is None:
            raise ValueError("loss_type='luspo' needs seq_ids (it averages over sequences)")
        num_items = max(int(torch.unique(seq).numel()), 1)  # host-device sync
    return _uniform(m, num_items, device)


@dataclass(frozen=True)
class LossType:
    """Everything one loss type decides, in one place (TRL 1.16's definitions):

    objective     the per-token policy term and its clip-active mask, from the ratio at `levels`
    weights       w [M] of one micro-batch: loss = Σ_t w_t·L_t
    step_items    the whole optimiser step's denominator from (sequences, span tokens, the span-length
                  cap), so that micro-batch (and rank) losses add up to the step's; None: local only
    levels        the importance-ratio levels it accepts (TRL warns on the others; r3fast refuses them)
    mean_of_micro_batches  the step loss is the mean of the micro-batch losses (bnpo normalises each
                  micro-batch on its own), not their sum
    weights_inside  the sampler-correction weights enter the objective itself (vespo: inside φ), not as
                  a factor on it; then only token-level correction modes are allowed (as TRL)
    """

    name: str
    objective: Objective
    weights: Weights
    step_items: Callable[[int, int, int], float | None]
    levels: tuple[str, ...] = ("token",)
    mean_of_micro_batches: bool = False
    weights_inside: bool = False
    source: str = ""


LOSS_TYPES: dict[str, LossType] = {
    t.name: t
    for t in (
        LossType("grpo", clipped_objective, grpo_weights, lambda seqs, tokens, cap: seqs,
                 levels=RATIO_LEVELS, source="DeepSeekMath; GSPO at sequence level"),
        LossType("bnpo", clipped_objective, bnpo_weights, lambda seqs, tokens, cap: None,
                 mean_of_micro_batches=True, source="TRL"),
        LossType("dr_grpo", clipped_objective, dr_grpo_weights, lambda seqs, tokens, cap: seqs * cap,
                 source="Dr. GRPO (2503.20783)"),
        LossType("dapo", clipped_objective, dapo_weights, lambda seqs, tokens, cap: tokens,
                 source="DAPO (2503.14476)"),
        LossType("cispo", cispo_objective, dapo_weights, lambda seqs, tokens, cap: tokens,
                 source="MiniMax-M1 (2506.13585), ScaleRL"),
        LossType("sapo", sapo_objective, grpo_weights, lambda seqs, tokens, cap: seqs,
                 levels=RATIO_LEVELS, source="SAPO (2511.20347)"),
        LossType("luspo", clipped_objective, luspo_weights, lambda seqs, tokens, cap: seqs,
                 levels=("sequence",), source="LUSPO"),
        LossType("vespo", vespo_objective, dapo_weights, lambda seqs, tokens, cap: tokens,
                 weights_inside=True, source="VESPO"),
    )
}  # fmt: skip


def per_token_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    adv: Tensor,
    beta: float,
    *,
    loss_type: LossType,
    params: ObjectiveParams,
    seq: Tensor | None = None,
    ratio_level: str = "token",
    is_weights: Tensor | None = None,
    bias_correction_kl: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """L_t, kl_t (detached) and the clip mask for the masked tokens. All [M].

    is_weights [M]: importance weights correcting for the sampler/learner mismatch; like TRL they
    scale the policy term only, not the KL term (vespo: they enter its weight φ instead).
    bias_correction_kl: TRL's `use_bias_correction_kl`, the KL term times the ratio r (at the
    ratio level, with its gradient: at r ≡ 1 the value is unchanged but the gradient gains kl·∇log r)."""
    old = logp.detach() if old_logp is None else old_logp
    ratio = importance_ratio(logp, old, seq, ratio_level)
    span = Span(logp=logp, old=old, adv=adv, ratio=ratio, seq=seq, is_weights=is_weights)
    loss, active = loss_type.objective(span, params)
    if is_weights is not None and not loss_type.weights_inside:
        loss = loss * is_weights
    if ref_logp is None:
        return loss, torch.zeros_like(logp).detach(), active
    kl = k3_kl(logp, ref_logp)
    if beta > 0:
        loss = loss + beta * (kl * ratio if bias_correction_kl else kl)
    return loss, kl.detach(), active


def reduce_span_loss(
    logp: Tensor,
    entropy: Tensor,
    *,
    adv: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    seq: Tensor | None,
    beta: float,
    loss_type: LossType,
    params: ObjectiveParams,
    num_items: float | Tensor | None,
    ratio_level: str = "token",
    is_weights: Tensor | None = None,
    bias_correction_kl: bool = False,
) -> SpanLossOutput:
    """From logp [M] (carrying the graph back to h and W) to the scalar loss and the log outputs."""
    loss_t, kl, active = per_token_loss(
        logp, old_logp, ref_logp, adv, beta, loss_type=loss_type, params=params, seq=seq,
        ratio_level=ratio_level, is_weights=is_weights, bias_correction_kl=bias_correction_kl,
    )  # fmt: skip
    w = loss_type.weights(logp.numel(), seq, num_items, logp.device)
    loss = (loss_t * w.to(loss_t.dtype)).sum()  # an empty sum is 0 and keeps the graph (zero grads for M = 0)
    clip_frac = active.float().mean() if active.numel() else torch.zeros((), device=logp.device)
    return SpanLossOutput(loss, logp.detach(), kl, clip_frac, entropy.detach())
