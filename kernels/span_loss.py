"""Public entry of the fused span GRPO loss: input checks, dispatch to Triton or torch, outputs.

Only the V-wide work (h·Wᵀ, log-sum-exp, its backward) lives in the implementations; the
per-token terms on the M masked positions are shared torch code (`loss_terms.py`), whose
autograd hands dL/dlogp [M] to the implementation's backward.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch

from .loss_terms import LOSS_TYPES, RATIO_LEVELS, ObjectiveParams, SpanLossOutput, reduce_span_loss
from .span_logp_function import SpanLogp
from .span_loss_torch import torch_span_logp

Tensor = torch.Tensor
LogpFn = Callable[[Tensor, Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_INTS = (torch.int64, torch.int32)


IMPLS = ("auto", "triton", "triton_atomic", "torch")  # one name per implementation


def _logp_fn(impl: str, hidden: Tensor) -> LogpFn:
    """The implementation of (logp, entropy) picked by `impl`.

    "triton" is the Triton forward with the split-V backward (deterministic, matmul-bound);
    "triton_atomic" keeps the tiled backward with fp32 atomics, for comparison.
    """
    if impl == "auto":
        impl = "triton" if hidden.is_cuda else "torch"
    if impl == "torch":
        return torch_span_logp
    if impl in ("triton", "triton_atomic"):
        if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"impl={impl!r} needs CUDA tensors (or TRITON_INTERPRET=1 set before import)")
        from .span_loss_triton import atomic_backward, triton_forward  # imports triton: only when asked

        if impl == "triton_atomic":
            bwd = atomic_backward
        else:
            from .span_loss_splitv import splitv_backward as bwd

        return lambda h, w, idx, y, t: SpanLogp.apply(triton_forward, bwd, h, w, idx, y, t)
    raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")


def _check_vector(name: str, x: Tensor | None, n: int, m: int | None, dtypes, device) -> None:
    """x must be 1-D of length n (or m, when given), of one of dtypes, on device."""
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    lengths = (n,) if m is None else (m, n)
    if x.dim() != 1 or x.shape[0] not in lengths:
        want = " or ".join(f"[{k}]" for k in dict.fromkeys(lengths))
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but hidden is on {device}")


def _check_inputs(hidden, weight, targets, mask, advantages, seq_ids) -> None:
    for name, x in (("hidden", hidden), ("weight", weight)):
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if x.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight [V, H] must match hidden's H={hidden.shape[1]}, got {list(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    n, dev = hidden.shape[0], hidden.device
    _check_vector("targets", targets, n, None, _INTS, dev)
    _check_vector("mask", mask, n, None, (torch.bool,), dev)
    _check_vector("advantages", advantages, n, None, _FLOATS + (torch.float64,), dev)
    _check_vector("seq_ids", seq_ids, n, None, _INTS, dev)


def _check_scalars(beta, eps_low, eps_high, temperature, loss_type, ref_logp, num_items) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if beta < 0 or eps_low < 0 or eps_high < 0:
        raise ValueError(f"beta, eps_low, eps_high must be >= 0, got {beta}, {eps_low}, {eps_high}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's log-probs, e.g. from span_logprobs)")
    if num_items is not None and not bool(torch.as_tensor(num_items) > 0):  # host-device sync if a tensor
        raise ValueError(f"num_items must be > 0, got {num_items}")


def _check_objective(loss_type: str, ratio_level: str, params: ObjectiveParams, seq_ids) -> None:
    """The ratio level the loss type accepts (TRL's rules), and the objective's own knobs."""
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    levels = LOSS_TYPES[loss_type].levels
    if ratio_level not in levels:
        raise ValueError(f"loss_type={loss_type!r} takes ratio_level {' or '.join(map(repr, levels))}, "
                         f"got {ratio_level!r}")  # fmt: skip
    if seq_ids is None and (ratio_level == "sequence" or loss_type in ("vespo", "luspo")):
        raise ValueError(f"loss_type={loss_type!r} at ratio_level={ratio_level!r} needs seq_ids")
    if not (params.sapo_temperature_pos > 0 and params.sapo_temperature_neg > 0):
        raise ValueError(f"sapo temperatures must be > 0, got {params.sapo_temperature_pos}, "
                         f"{params.sapo_temperature_neg}")  # fmt: skip
    if params.delta is not None and not params.delta > 0:
        raise ValueError(f"delta must be > 0 (or None), got {params.delta}")


def _masked_rows(mask: Tensor, targets: Tensor, v: int) -> tuple[Tensor, Tensor]:
    """(idx [M], targets at idx [M]); checks the masked targets are token ids in [0, V)."""
    idx = mask.nonzero().squeeze(1)  # [M]  host-device sync (M sizes everything after)
    y = targets.index_select(0, idx).long()  # int32 ids are fine too; the paths index with int64
    if y.numel() and bool(((y < 0) | (y >= v)).any()):  # host-device sync
        raise ValueError(f"targets at masked positions must lie in [0, {v}) (the vocabulary of weight)")
    return idx, y


def _at_mask(x: Tensor | None, idx: Tensor, n: int) -> Tensor | None:
    """A per-token input given as [N] or already as [M] -> fp32 [M]."""
    if x is None:
        return None
    if x.shape[0] == n and n != idx.numel():
        x = x.index_select(0, idx)
    return x.float()


def span_grpo_loss(
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
    params: ObjectiveParams | None = None,
    impl: str = "auto",
) -> SpanLossOutput:
    """GRPO loss on the masked positions of packed rows, without materialising [M, V] logits.

    hidden [N, H], weight [V, H] (lm_head), targets [N] next-token ids, mask [N] bool (positions
    predicting a reflection token), advantages [N]; old_logp / ref_logp [M] (masked positions, in
    order) or [N]; seq_ids [N] sequence id of each position (needed by "grpo"); num_items: the
    global denominator across micro-batches and ranks (see `loss_terms.py`); is_weights [M] or [N]:
    importance weights on the clipped surrogate (sampler/learner correction, TRL's placement);
    bias_correction_kl: the KL term times the ratio (TRL's `use_bias_correction_kl`); ratio_level:
    "token" or "sequence" (GSPO: one length-normalised ratio per sequence id; the loss type says which
    it accepts); params: the objectives' other knobs (sapo's τ±, vespo's k/λ, delta; eps_low/eps_high
    here win over theirs); impl: "auto" (Triton on CUDA, else torch), "triton" or "torch".
    Returns a `SpanLossOutput`.
    """
    fn = _logp_fn(impl, hidden)
    _check_inputs(hidden, weight, targets, mask, advantages, seq_ids)
    _check_scalars(beta, eps_low, eps_high, temperature, loss_type, ref_logp, num_items)
    params = dataclasses.replace(
        params or ObjectiveParams(), eps_low=float(eps_low), eps_high=float(eps_high)
    )
    _check_objective(loss_type, ratio_level, params, seq_ids)
    n = hidden.shape[0]
    idx, y = _masked_rows(mask, targets, weight.shape[0])
    m = idx.numel()
    for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("is_weights", is_weights)):
        _check_vector(name, x, n, m, _FLOATS + (torch.float64,), hidden.device)
    logp, entropy = fn(hidden, weight, idx, y, float(temperature))
    return reduce_span_loss(
        logp,
        entropy,
        adv=advantages.index_select(0, idx).float(),
        old_logp=_at_mask(old_logp, idx, n),
        ref_logp=_at_mask(ref_logp, idx, n),
        seq=None if seq_ids is None else seq_ids.index_select(0, idx),
        beta=float(beta),
        loss_type=LOSS_TYPES[loss_type],
        params=params,
        num_items=num_items,
        ratio_level=ratio_level,
        is_weights=_at_mask(is_weights, idx, n),
        bias_correction_kl=bool(bias_correction_kl),
    )


@torch.no_grad()
def span_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    impl: str = "auto",
) -> Tensor:
    """Log-probs [M] fp32 of the masked targets (no grad): the reference or old policy's logp."""
    fn = _logp_fn(impl, hidden)
    _check_inputs(hidden, weight, targets, mask, None, None)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    idx, y = _masked_rows(mask, targets, weight.shape[0])
    return fn(hidden, weight, idx, y, float(temperature))[0]
