"""The test oracle: the span GRPO loss written out from TRL's definitions, sharing no code with
the implementation (`loss_terms.py`, `span_loss*.py`).

It materialises the full logits of every position ([N, V]), takes log_softmax, and lays the masked
tokens out per sequence in TRL's padded `[sequences, tokens]` form with a completion mask, then
reduces exactly as `trl.GRPOTrainer._compute_loss` does for each loss type. Run with
`compute_dtype=torch.float64` it is the ground truth; in the input dtype it is the "naive reference
in the same dtype" whose error sets the tolerance for the fused paths. Keep it to test shapes.
"""

from __future__ import annotations

import math
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


def _objective(loss_type, coef_1, log_ratio, logp, adv, cmask, isw, eps_low, eps_high, knob):
    """(per-token policy term [S, T], low-clipped [S, T], high-clipped [S, T]) of one loss type, in
    TRL's padded layout; coef_1 is the importance ratio (token or sequence level)."""
    zeros = torch.zeros_like(cmask, dtype=torch.bool)
    low, high = zeros, zeros
    if loss_type == "cispo":  # −sg(min(r, ε_max))·A·logp
        per_token = -torch.clamp(coef_1, max=eps_high).detach() * adv * logp
        high = (coef_1 > eps_high) & (adv > 0)
    elif loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        c1 = coef_1 if knob["delta"] is None else torch.clamp(coef_1, max=knob["delta"])
        per_token = -torch.min(c1 * adv, coef_2 * adv)
        low = (coef_1 < 1 - eps_low) & (adv < 0)
        high = (coef_1 > 1 + eps_high) & (adv > 0)
    elif loss_type == "sapo":  # −σ(τ(r − 1))·4/τ·A, τ = τ+ for A > 0 else τ−
        pos = torch.full_like(adv, knob["sapo_temperature_pos"])
        tau = torch.where(adv > 0, pos, torch.full_like(adv, knob["sapo_temperature_neg"]))
        per_token = -torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau * adv
    elif loss_type == "vespo":  # −sg(φ(w))·A·logp, φ(w) = e^λ·w^k·e^(−λw), w = Π_t r_t (× Π_t IS_t)
        lo = math.log(1e-8)
        with torch.no_grad():
            seq_log = (torch.clamp(log_ratio, -20, 20) * cmask).sum(-1, keepdim=True)
            if isw is not None:
                seq_log = seq_log + (torch.clamp(torch.log(isw), lo, 20) * cmask).sum(-1, keepdim=True)
            log_w = torch.clamp(seq_log, lo, 20)
            nonneg = adv >= 0
            k = torch.where(nonneg, adv.new_tensor(knob["vespo_k_pos"]), adv.new_tensor(knob["vespo_k_neg"]))
            lam = torch.where(nonneg, adv.new_tensor(knob["vespo_lambda_pos"]),
                              adv.new_tensor(knob["vespo_lambda_neg"]))  # fmt: skip
            lam = lam.clamp(min=1e-4)
            phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
            phi = phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        per_token = -phi * adv * logp
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return per_token, low, high


def _reduce(loss_type, L, cmask, num_items):
    """TRL's normalisation of the masked per-token loss L [S, T] for each loss type."""
    n_seq, width = cmask.shape
    if loss_type in ("grpo", "sapo"):
        # ((L * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean() over this batch's sequences
        per_seq = L.sum(-1) / cmask.sum(-1).clamp(min=1)
        loss = per_seq.sum() / (num_items if num_items is not None else max(n_seq, 1))
    elif loss_type == "bnpo":
        loss = L.sum() / cmask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        # (L * mask).sum() / (B * max_completion_length); the local default is the widest span
        denom = num_items if num_items is not None else max(n_seq * width, 1)
        loss = L.sum() / denom
    elif loss_type in ("dapo", "cispo", "vespo"):
        denom = num_items if num_items is not None else cmask.sum().clamp(min=1)
        loss = L.sum() / denom
    else:  # luspo: (L * mask).sum(-1).mean(): each sequence's sum, averaged over sequences
        loss = L.sum() / (num_items if num_items is not None else max(n_seq, 1))
    return loss


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
    ratio_level: str = "token",
    params: object | None = None,
    compute_dtype: torch.dtype | None = None,
) -> ReferenceOutput:
    """Same contract as `span_grpo_loss`. `num_items` plays the role of TRL's step-wide
    normaliser: grpo/sapo/luspo's number of sequences, dr_grpo's sequences × max completion length,
    dapo/cispo/vespo's completion tokens (`num_items_in_batch`); bnpo ignores it, as TRL does.
    `params`: anything with TRL's knob names as attributes (sapo_temperature_pos/neg, vespo_k_pos,
    vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, delta); missing ones take TRL's defaults."""
    knob = {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05, "vespo_k_pos": 2.0,
            "vespo_lambda_pos": 3.0, "vespo_k_neg": 3.0, "vespo_lambda_neg": 2.0, "delta": None}  # fmt: skip
    knob = {k: getattr(params, k, v) for k, v in knob.items()}
    dt = compute_dtype or hidden.dtype
    logits = hidden.to(dt) @ weight.to(dt).T / temperature  # [N, V], every position
    logprobs = torch.log_softmax(logits, dim=-1)
    safe = torch.where(mask, targets, torch.zeros_like(targets)).long()
    token_logp = logprobs.gather(1, safe[:, None]).squeeze(1)  # [N]
    entropy = -(logprobs.exp() * logprobs).sum(-1)  # [N]
    flat_logp = token_logp[mask]  # [M]
    if seq_ids is None and (loss_type in ("grpo", "sapo", "luspo", "vespo") or ratio_level == "sequence"):
        raise ValueError(f"loss_type={loss_type!r} at ratio_level={ratio_level!r} needs seq_ids")
    seq = torch.zeros_like(flat_logp, dtype=torch.long) if seq_ids is None else seq_ids[mask]
    flat_old = flat_logp.detach() if old_logp is None else _masked(old_logp, mask).to(dt)

    # TRL's padded layout: [S, T] per sequence, completion mask cmask
    logp, cmask = _padded(flat_logp, seq)
    old, _ = _padded(flat_old, seq)
    adv, _ = _padded(advantages[mask].to(dt), seq)
    isw = None if is_weights is None else _padded(_masked(is_weights, mask).to(dt), seq)[0]

    log_ratio = logp - old
    if ratio_level == "token":
        log_iw = log_ratio
    elif ratio_level == "sequence":  # GSPO: the mean log-ratio over the sequence's completion tokens
        log_iw = ((log_ratio * cmask).sum(-1) / cmask.sum(-1).clamp(min=1)).unsqueeze(-1)  # [S, 1]
    else:
        raise ValueError(f"unknown ratio_level {ratio_level!r}")
    coef_1 = torch.exp(log_iw)
    per_token, low, high = _objective(
        loss_type, coef_1, log_ratio, logp, adv, cmask, isw, eps_low, eps_high, knob
    )
    if isw is not None and loss_type != "vespo":  # TRL: per_token_loss * IS ratio, before the KL
        per_token = per_token * isw
    flat_kl = torch.zeros_like(flat_logp)
    if ref_logp is not None:
        ref = _masked(ref_logp, mask).to(dt)
        flat_kl = torch.exp(ref - flat_logp) - (ref - flat_logp) - 1
        kl = _padded(flat_kl, seq)[0]
        kl_term = kl * coef_1 if bias_correction_kl else kl  # TRL's use_bias_correction_kl
        if beta != 0:
            per_token = per_token + beta * kl_term

    L = per_token * cmask  # [S, T] (a [S, 1] sequence-level term broadcasts onto its tokens)
    loss = _reduce(loss_type, L, cmask, num_items)

    clipped = ((low | high) & cmask.bool()).to(dt)
    clip_frac = clipped.sum() / cmask.sum() if flat_logp.numel() else torch.zeros((), dtype=dt)
    return ReferenceOutput(
        loss, flat_logp.detach(), flat_kl.detach(), clip_frac.detach(), entropy[mask].detach()
    )


def naive_is_weights(
    old_logp: Tensor,
    sampler_logp: Tensor,
    seq_ids: Tensor,
    mode: str,
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> Tensor:
    """TRL's vLLM importance-sampling correction, [M] per span token (in order, sequence ids [M]):
    token_* on e^(old − sampler) per token, sequence_* on e^Σ_t(old − sampler) per sequence;
    *_truncate clamps into [clip_min, clip_max], *_mask zeroes what lies outside it."""
    diff, cmask = _padded((old_logp - sampler_logp).double(), seq_ids)
    diff = diff * cmask
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)  # [S, 1]
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    elif mode.endswith("mask"):
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    else:
        raise ValueError(f"unknown importance-sampling mode {mode!r}")
    full = ratio * torch.ones_like(cmask)  # [S, T]
    # back to mask order: the k-th token of sequence s is full[row(s), k]
    ids = sorted(set(seq_ids.tolist()))
    row_of, used, out = {s: i for i, s in enumerate(ids)}, [0] * len(ids), []
    for s in seq_ids.tolist():
        out.append(full[row_of[s], used[row_of[s]]])
        used[row_of[s]] += 1
    return torch.stack(out) if out else full.new_zeros(0)
