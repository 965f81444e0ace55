"""The LM versus the module its forward runs through: one owner of the concept.

Under data parallelism the learner's forward runs through a wrapper (DDP around `DecoderOnly`, or
FSDP2 sharding `DecoderOnly` in place) whose hooks sync gradients, while the span loss takes the
lm_head weight from the causal LM itself: `unwrap` gives that LM back from whatever wraps it.
"""

from __future__ import annotations

import torch

from .forward import decoder_of

__all__ = ["DecoderOnly", "unwrap"]


class DecoderOnly(torch.nn.Module):
    """A causal LM's decoder as a module of its own, so the learner's forward runs through the
    DDP / FSDP2 wrapper (whose hooks sync gradients) while the lm_head stays with the span loss."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, **kwargs) -> torch.Tensor:
        return decoder_of(self.lm)(**kwargs).last_hidden_state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside a DDP / DecoderOnly wrapper (FSDP2 shards in place: the same object)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.lm if isinstance(model, DecoderOnly) else model
