"""The LM, its decoder, and the module its forward runs through: one owner of the concept.

Under data parallelism the learner's forward runs through a wrapper (DDP around `DecoderOnly`, or
FSDP2 sharding `DecoderOnly` in place) whose hooks sync gradients, while the span loss takes the
lm_head weight from the causal LM itself: `unwrap` gives that LM back from whatever wraps it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "DecoderOnly",
    "decoder_of",
    "full_weight",
    "is_fsdp2",
    "is_sharded_tensor",
    "unwrap",
    "whole_weights",
]


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (embeddings .. final norm) of a causal LM, without its lm_head."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if dec is None or not hasattr(dec, "config"):
        raise TypeError(f"cannot find the decoder of {type(model).__name__}: no get_decoder() or .model")
    return dec


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


def is_fsdp2(module: torch.nn.Module) -> bool:
    """Sharded by FSDP2's `fully_shard` (which makes the module an FSDPModule in place)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_sharded_tensor(t: torch.Tensor) -> bool:
    """An FSDP2 shard (a DTensor) rather than a whole tensor."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """A parameter as one tensor: an FSDP2-sharded DTensor is all-gathered (its grad reduce-scatters)."""
    return weight.full_tensor() if is_sharded_tensor(weight) else weight


def whole_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of every parameter (tied ones once), detached. FSDP2 shards are gathered
    one parameter at a time as the caller consumes them, so at most one whole parameter beyond the
    shards is alive; every rank must consume the same names in the same order (each is a collective)."""
    for name, p in model.named_parameters():
        yield name, full_weight(p.detach())
