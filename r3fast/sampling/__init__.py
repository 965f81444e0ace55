"""Generation backends behind one contract (`Sampler`).

`VLLMSampler` imports without vLLM installed; constructing it raises `VLLMUnavailableError`
with the reason when vLLM cannot run (never a silent fall-back to HF).
"""

from .base import Completion, Sampler, SamplingParams
from .build import build_sampler, needs_learner_bytes, sampling_params
from .hf import HFSampler
from .vllm_compat import VLLMUnavailableError
from .vllm_sampler import VLLMSampler

__all__ = [
    "Completion",
    "HFSampler",
    "Sampler",
    "SamplingParams",
    "VLLMSampler",
    "VLLMUnavailableError",
    "build_sampler",
    "needs_learner_bytes",
    "sampling_params",
]
