"""Generation backends behind one contract (`Sampler`)."""

from .base import Completion, Sampler, SamplingParams
from .hf import HFSampler

__all__ = ["Completion", "HFSampler", "Sampler", "SamplingParams"]
