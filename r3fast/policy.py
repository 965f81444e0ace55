"""The policy and its KL reference from `[model]` (and `loss.beta`): one builder for the trainer.

    build_policy(mc, device)      (model, tokenizer): loaded (or the caller's), checked for what the
                                  span loss models, packed attention on, gradient checkpointing, LoRA
    build_reference(cfg, model)   the frozen copy for the KL term, or None (β = 0, or LoRA: the
                                  policy with its adapters disabled is the reference)
    inference_copy(model, dtype)  a frozen whole copy for a sampler that must not share the learner's
                                  module (FSDP2 shards it)
"""

from __future__ import annotations

import copy

import torch

from .config import ModelConfig, R3Config
from .lora import apply_lora
from .loss import check_supported
from .model import use_packed_attention
from .models import load_model

__all__ = ["build_policy", "build_reference", "inference_copy"]


def build_policy(mc: ModelConfig, device: torch.device, model=None, tokenizer=None):
    """(model, tokenizer) ready to train on `device`; pass `model=`/`tokenizer=` to bring your own."""
    if model is None:
        model, tokenizer = load_model(mc.name, dtype=mc.dtype, device=device, load_in_4bit=mc.load_in_4bit,
                                      compute_dtype=mc.compute_dtype)  # fmt: skip
    elif tokenizer is None:
        raise ValueError("pass tokenizer= together with model=")
    model = model if mc.load_in_4bit else model.to(device)
    check_supported(model)
    # Varlen attention over packed rows (flash-attn / torch varlen / flex / per-sequence SDPA) instead
    # of transformers' dense [T, T] block mask; a reference copy inherits it.
    use_packed_attention(model)
    if mc.gradient_checkpointing:  # non-reentrant: works with LoRA and with our attention kwargs
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mc.lora is not None:
        model = apply_lora(model, mc.lora, quantized=mc.load_in_4bit)
    return model, tokenizer


def build_reference(cfg: R3Config, model: torch.nn.Module) -> torch.nn.Module | None:
    """The reference policy for the KL term, only when it is used and is not the policy itself."""
    if cfg.loss.beta > 0 and cfg.model.lora is None:
        return copy.deepcopy(model).eval().requires_grad_(False)
    return None


def inference_copy(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A frozen copy of the whole model in the serving dtype (HFSampler(own_weights=True) keeps it)."""
    return copy.deepcopy(model).to(getattr(torch, dtype)).eval().requires_grad_(False)
