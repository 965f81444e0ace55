"""The autograd Function of the span log-probs, shared by the torch and the Triton paths.

Each path brings only its forward (logp, entropy, lse) and its backward from lse; saving the inputs,
marking the entropy non-differentiable and the gradient of W only when asked for live here, once.
"""

from __future__ import annotations

import torch


class SpanLogp(torch.autograd.Function):
    """(fwd, bwd, hidden [N, H], weight [V, H], idx [M], targets [M], τ) -> (logp [M], entropy [M]) fp32.

    One autograd wrapper for both implementations: `fwd` returns (logp, entropy, lse) and `bwd`
    recomputes the logit blocks from lse to return (d hidden, d weight or None).
    """

    @staticmethod
    def forward(ctx, fwd, bwd, hidden, weight, idx, targets, temperature):  # type: ignore[override]
        logp, entropy, lse = fwd(hidden, weight, idx, targets, temperature)
        ctx.save_for_backward(hidden, weight, idx, targets, lse)
        ctx.bwd, ctx.temperature = bwd, temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):  # type: ignore[override]
        hidden, weight, idx, targets, lse = ctx.saved_tensors
        need_dw = ctx.needs_input_grad[3]
        dh, dw = ctx.bwd(grad_logp, hidden, weight, idx, targets, lse, ctx.temperature, need_dw)
        return None, None, dh, dw, None, None, None
