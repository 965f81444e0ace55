"""Fused kernels of r3fast, shipped as `r3fast.kernels`.

`span_grpo_loss` / `span_logprobs`: the GRPO loss and log-probs on the masked (reflection) positions
of packed rows, from final hidden states and the lm_head weight, without [M, V] logits.
"""

from .loss_terms import LOSS_TYPES, RATIO_LEVELS, LossType, ObjectiveParams, SpanLossOutput
from .span_loss import span_grpo_loss, span_logprobs

__all__ = [
    "LOSS_TYPES",
    "RATIO_LEVELS",
    "LossType",
    "ObjectiveParams",
    "SpanLossOutput",
    "span_grpo_loss",
    "span_logprobs",
]
