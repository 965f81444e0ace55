"""Training data for the learner: sequences, packed rows, packed-attention forward, micro-batch loader."""

from .attention import BACKENDS, available_backends, select_backend, use_packed_attention
from .forward import decoder_of, forward_hidden
from .loader import pack_step
from .packing import IGNORE_INDEX, PackedBatch, StepPlan, TrainSequence, pack_sequences, plan_step
from .prefix import pack_groups

__all__ = [
    "BACKENDS",
    "IGNORE_INDEX",
    "PackedBatch",
    "StepPlan",
    "TrainSequence",
    "available_backends",
    "decoder_of",
    "forward_hidden",
    "pack_groups",
    "pack_sequences",
    "pack_step",
    "plan_step",
    "select_backend",
    "use_packed_attention",
]
