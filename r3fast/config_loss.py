"""`[loss]`: the GRPO span loss over reflection tokens (r3fast.loss.SpanLoss, r3fast.kernels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .config_base import FREE_ON_RESUME, _Section
from .errors import ConfigError

__all__ = ["IS_ALIASES", "RATIO_LEVELS", "LossConfig"]

# Which importance-ratio levels each loss type accepts: TRL 1.16 warns on the others (luspo wants the
# sequence level, vespo builds its own sequence weight from token ratios, and a sequence ratio under a
# token-sum reduction weights each sequence by its length); r3fast refuses them. Pinned to the kernel's
# `LossType.levels` by a test (this module imports no torch).
RATIO_LEVELS = {"grpo": ("token", "sequence"), "bnpo": ("token",), "dr_grpo": ("token",),
                "dapo": ("token",), "cispo": ("token",), "sapo": ("token", "sequence"),
                "luspo": ("sequence",), "vespo": ("token",)}  # fmt: skip
# Old names of the sampler-correction modes, kept as aliases (read as the TRL mode they were).
IS_ALIASES = {"token_tis": "token_truncate", "sequence_mis": "sequence_mask"}


@dataclass(kw_only=True)
class LossConfig(_Section):
    """The GRPO span loss over reflection tokens."""

    SECTION: ClassVar[str] = "loss"
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    """TRL's loss types: grpo, bnpo, dr_grpo, dapo (normalisations of the clipped surrogate); cispo
    (capped, detached ratio × logp); sapo (sigmoid gate); luspo (sequence sums); vespo (gamma weight)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """TRL's name: the ratio per token, or one per sequence (GSPO: exp of the mean log-ratio over the
    reflection). sequence: grpo, sapo, luspo (which needs it); token: the others."""
    beta: float = 0.001
    """k3 KL coefficient to the frozen reference model (paper: 0.001); 0 loads no reference."""
    eps_low: float = 0.2
    """Lower clip range of the importance ratio."""
    eps_high: float = 0.2
    """Upper clip range of the importance ratio; cispo: the cap ε_max on the ratio itself (TRL's
    epsilon_high; ScaleRL recommends 5)."""
    delta: float | None = None
    """TRL's delta (INTELLECT-2's two-sided clip): cap on the unclipped ratio; null: off."""
    sapo_temperature_pos: float = 1.0
    """sapo's gate temperature τ+ for tokens with advantage > 0 (TRL's default)."""
    sapo_temperature_neg: float = 1.05
    """sapo's gate temperature τ− for tokens with advantage ≤ 0 (TRL's default)."""
    vespo_k_pos: float = 2.0
    """vespo's gamma shape k for advantage ≥ 0: φ(w) = e^λ·w^k·e^(−λw)."""
    vespo_lambda_pos: float = 3.0
    """vespo's gamma rate λ for advantage ≥ 0."""
    vespo_k_neg: float = 3.0
    """vespo's gamma shape k for advantage < 0."""
    vespo_lambda_neg: float = 2.0
    """vespo's gamma rate λ for advantage < 0."""
    bias_correction_kl: bool = False
    """TRL's use_bias_correction_kl (TRL's default: true): the KL term times the importance ratio.
    Same value at ratio 1, but the gradient gains kl·∇logp; false is the plain k3 gradient."""
    impl: Literal["auto", "triton", "triton_atomic", "triton_splitv", "torch"] = field(
        default="auto", metadata=FREE_ON_RESUME
    )
    """Span-loss implementation: auto (triton on CUDA, else torch); triton = Triton forward + split-V
    backward (deterministic); triton_atomic = the tiled backward with fp32 atomics; torch = chunked."""

    num_iterations: int = 1
    """μ (TRL's name): optimiser steps per rollout batch. μ > 1 reuses the batch; the learner's own
    log-probs before the first update are the "old" policy, so ratio and clip act."""
    is_correction: Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask",
                           "token_tis", "sequence_mis"] = "none"  # fmt: skip
    """Sampler/learner mismatch correction (TRL's vllm_importance_sampling_mode), on ρ = π_old/π_sampler
    per token (token_*) or its product over the reflection (sequence_*): *_truncate weights the
    policy term by clamp(ρ, is_clip_min, is_clip_max), *_mask by 1[ρ in [is_clip_min, is_clip_max]].
    Old names (aliases): token_tis = token_truncate; sequence_mis = sequence_mask with is_clip_min
    defaulting to 1/is_clip_max (now TRL's weight ρ inside the band, where it used to be 1)."""
    is_clip_min: float | None = None
    """TRL's vllm_importance_sampling_clip_min: lower bound of ρ; null: none."""
    is_clip_max: float | None = 3.0
    """TRL's vllm_importance_sampling_clip_max (default 3; formerly is_cap): upper bound of ρ; null: none."""

    def _check(self) -> None:
        self._need("beta", self.beta >= 0, ">= 0")
        self._need("eps_low", 0 <= self.eps_low < 1, "in [0, 1)")
        self._need("eps_high", self.eps_high >= 0, ">= 0")
        self._need("num_iterations", self.num_iterations >= 1, ">= 1")
        self._need("delta", self.delta is None or self.delta > 0, "> 0 or null")
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            self._need(name, getattr(self, name) > 0, "> 0")
        levels = RATIO_LEVELS[self.loss_type]
        if self.importance_sampling_level not in levels:
            raise ConfigError(
                f"loss.importance_sampling_level={self.importance_sampling_level!r} is refused with "
                f"loss_type={self.loss_type!r}, which takes {' or '.join(levels)}"
            )
        self._normalise_is()
        if self.loss_type == "vespo" and self.is_correction.startswith("sequence"):
            raise ConfigError(f"loss.is_correction={self.is_correction!r}: vespo takes only token_truncate "
                              "or token_mask (its weight folds in per-token ratios, as in TRL)")  # fmt: skip

    def _normalise_is(self) -> None:
        """Aliases to TRL's names (idempotent: a saved config reloads to itself), then the bounds."""
        if self.is_correction == "sequence_mis" and self.is_clip_min is None and self.is_clip_max:
            self.is_clip_min = 1.0 / self.is_clip_max  # the old rule: ratio in [1/c, c]
        self.is_correction = IS_ALIASES.get(self.is_correction, self.is_correction)
        lo, hi = self.is_clip_min, self.is_clip_max
        self._need("is_clip_min", lo is None or lo >= 0, ">= 0 or null")
        self._need("is_clip_max", hi is None or hi > 0, "> 0 or null")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"loss.is_clip_min {lo} must be <= loss.is_clip_max {hi}")
