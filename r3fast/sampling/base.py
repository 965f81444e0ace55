"""The sampler contract shared by every generation backend (HF `generate`, colocated vLLM).

Prompts go in as token ids (already rendered through the chat template) so that the
learner can rebuild `prompt + completion` exactly from ids, with no re-tokenisation drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Completion", "Sampler", "SamplingParams"]


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus mass kept, in (0, 1]."""
    max_new_tokens: int = 256
    """Generation length cap, in tokens (the stop token counts)."""
    seed: int | None = None
    """Seed for this call; None draws from the backend's own generator."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra ids that end a completion besides the tokenizer's EOS."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(kw_only=True)
class Completion:
    text: str
    """Decoded completion, special tokens skipped."""
    token_ids: list[int]
    """Generated ids, including the stop token when generation stopped on one."""
    logprobs: list[float]
    """Per generated token: log-prob of that token under the sampling distribution
    (logits / temperature, before top-p), one float per entry of token_ids."""
    finish_reason: str
    """"stop" (EOS or a stop id) or "length" (hit max_new_tokens)."""


@runtime_checkable
class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt, `params.n` completions."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the sampler use `model`'s current weights."""
        ...

    def sleep(self) -> None:
        """Release generation memory (KV cache, maybe weights) for the learner."""
        ...

    def wake(self) -> None:
        """Undo `sleep`."""
        ...
