"""The sampler and its parameters from a config: one builder for `train`, `eval`, `mine` and `wim`.

`build_sampler` leaves the global torch generator as it found it (vLLM seeds it while it starts), so
the caller's seed holds whatever it builds after it; the learner's memory peak for vLLM's
`gpu_memory_utilization: auto` is the caller's to measure and pass (`learner_bytes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import Sampler, SamplingParams
from .hf import HFSampler
from .vllm_sampler import VLLMSampler

if TYPE_CHECKING:
    from ..config import ModelConfig, R3Config, SamplerConfig

__all__ = ["build_sampler", "needs_learner_bytes", "sampling_params", "serving_dtype"]


def serving_dtype(mc: ModelConfig) -> str:
    """The dtype the sampler serves: what the learner computes in."""
    return mc.compute_dtype if mc.compute_dtype != "float32" else mc.dtype


def needs_learner_bytes(cfg: R3Config, device: torch.device) -> bool:
    """vLLM sizes its share of the GPU from the learner's measured peak (`gpu_memory_utilization: auto`)."""
    s = cfg.sampler
    return s.backend == "vllm" and s.gpu_memory_utilization == "auto" and device.type == "cuda"


def build_sampler(
    cfg: R3Config,
    model=None,
    tokenizer=None,
    *,
    learner_bytes: int | None = None,
    own_weights: bool = False,
    **vllm_options: Any,
) -> Sampler:
    """hf: generate with `model` itself (nothing to copy; own_weights: `model` is the sampler's own
    copy, which `sync_weights` refreshes); vllm: its own engine for `cfg.model.name`,
    given `model`'s weights when one is passed; vllm_options override VLLMSampler's arguments. vLLM
    raises VLLMUnavailableError with the reason when it cannot run: no fall-back to HF."""
    s = cfg.sampler
    if s.backend == "hf":
        if model is None or tokenizer is None:
            raise ValueError("sampler.backend=hf generates with the model: pass model= and tokenizer=")
        return HFSampler(
            model,
            tokenizer,
            max_batch_size=s.max_batch_size,
            own_weights=own_weights,
            share_prefix=s.share_prefix,
        )
    # this process's GPU only (under torchrun, touching the others would put a context on each)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    options = dict(
        dtype=serving_dtype(cfg.model),
        gpu_memory_utilization=s.gpu_memory_utilization,
        learner_bytes=learner_bytes,
        sync_bucket_mb=s.sync_bucket_mb,
        sleep_level=s.sleep_level,
        max_model_len=s.max_model_len,
        seed=cfg.trainer.seed,
    )
    with torch.random.fork_rng(devices=devices):  # vLLM re-seeds the global generators
        sampler = VLLMSampler(cfg.model.name, **{**options, **vllm_options})
    if model is not None:
        sampler.sync_weights(model)
    return sampler


def sampling_params(
    s: SamplerConfig, *, reflection: bool, seed: int | None, temperature: float | None = None
) -> SamplingParams:
    """A reflection or an answer (first try, retry) under the sampler section's caps."""
    return SamplingParams(
        temperature=s.temperature if temperature is None else temperature,
        top_p=s.top_p,
        max_new_tokens=s.max_reflection_tokens if reflection else s.max_answer_tokens,
        seed=seed,
    )
