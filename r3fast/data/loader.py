"""The micro-batches of one optimiser step: packed rows of a token budget, in a seeded order.

A micro-batch is one packed row of <= max_tokens tokens, so the number of sequences per micro-batch
adapts to their lengths (short reflections: many per row). The rows of a step are a pure function of
(sequences, budget, layout, seed, step): a run resumed from a checkpoint (taken at step boundaries)
packs exactly the rows the straight run packed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..seeds import seed_for
from .packing import PackedBatch, StepPlan, TrainSequence, pack_sequences, plan_step
from .prefix import pack_groups

__all__ = ["pack_step"]


def pack_step(
    seqs: Sequence[TrainSequence], *, max_tokens: int, shared_prefix: bool, seed: int, step: int
) -> tuple[StepPlan, list[PackedBatch]]:
    """(the step's loss normalisers, its packed rows); shared_prefix stores each group's prefix once
    per row (tree mask, needs a mask backend: flex or sdpa)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    pack = pack_groups if shared_prefix else pack_sequences
    return plan_step(seqs), pack(seqs, max_tokens, seed=seed_for(seed, "pack", step))
