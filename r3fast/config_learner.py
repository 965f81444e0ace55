"""`[learner]`: how a rollout batch becomes optimiser steps (r3fast.learner.Learner): μ, the
sampler/learner importance correction and the gradient clip (no torch)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

from .config_base import _Section
from .errors import ConfigError

__all__ = ["IS_ALIASES", "IS_MODES", "LearnerConfig"]

# TRL's sampler-correction modes (the one list: the learner reads it too), and their old names, kept
# as aliases (read as the TRL mode they were).
IsMode = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
IS_MODES: tuple[str, ...] = typing.get_args(IsMode)
IS_ALIASES = {"token_tis": "token_truncate", "sequence_mis": "sequence_mask"}


@dataclass(kw_only=True)
class LearnerConfig(_Section):
    """The update: optimiser steps per rollout batch, sampler/learner correction, gradient clip."""

    SECTION: ClassVar[str] = "learner"
    num_iterations: int = 1
    """μ (TRL's name): optimiser steps per rollout batch. μ > 1 reuses the batch; the learner's own
    log-probs before the first update are the "old" policy, so ratio and clip act."""
    is_correction: Literal[IsMode, "token_tis", "sequence_mis"] = "none"
    """Sampler/learner mismatch correction (TRL's vllm_importance_sampling_mode), on ρ = π_old/π_sampler
    per token (token_*) or its product over the reflection (sequence_*): *_truncate weights the
    policy term by clamp(ρ, is_clip_min, is_clip_max), *_mask by 1[ρ in [is_clip_min, is_clip_max]].
    Old names (aliases): token_tis = token_truncate; sequence_mis = sequence_mask with is_clip_min
    defaulting to 1/is_clip_max (now TRL's weight ρ inside the band, where it used to be 1)."""
    is_clip_min: float | None = None
    """TRL's vllm_importance_sampling_clip_min: lower bound of ρ; null: none."""
    is_clip_max: float | None = 3.0
    """TRL's vllm_importance_sampling_clip_max (default 3; formerly is_cap): upper bound of ρ; null: none."""
    grad_clip: float = 1.0
    """Max global grad norm (TRL's max_grad_norm); 0 disables clipping."""

    def _check(self) -> None:
        self._need("num_iterations", self.num_iterations >= 1, ">= 1")
        self._need("grad_clip", self.grad_clip >= 0, ">= 0")
        self._normalise_is()

    def _normalise_is(self) -> None:
        """Aliases to TRL's names (idempotent: a saved config reloads to itself), then the bounds."""
        if self.is_correction == "sequence_mis" and self.is_clip_min is None and self.is_clip_max:
            self.is_clip_min = 1.0 / self.is_clip_max  # the old rule: ratio in [1/c, c]
        self.is_correction = IS_ALIASES.get(self.is_correction, self.is_correction)
        lo, hi = self.is_clip_min, self.is_clip_max
        self._need("is_clip_min", lo is None or lo >= 0, ">= 0 or null")
        self._need("is_clip_max", hi is None or hi > 0, "> 0 or null")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"learner.is_clip_min {lo} must be <= learner.is_clip_max {hi}")
