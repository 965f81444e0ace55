"""Training data for the learner: sequences, packed rows, shared-prefix rows, per-step micro-batches."""

from .loader import pack_step
from .packing import IGNORE_INDEX, PackedBatch, StepPlan, TrainSequence, pack_sequences, plan_step
from .prefix import pack_groups

__all__ = [
    "IGNORE_INDEX",
    "PackedBatch",
    "StepPlan",
    "TrainSequence",
    "pack_groups",
    "pack_sequences",
    "pack_step",
    "plan_step",
]
