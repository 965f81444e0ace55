"""`[loss]`: the GRPO span loss over reflection tokens (r3fast.loss.SpanLoss, r3fast.kernels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .config_base import FREE_ON_RESUME, _Section
from .errors import ConfigError

__all__ = ["RATIO_LEVELS", "LossConfig"]

# Which importance-ratio levels each loss type accepts: TRL 1.16 warns on the others (luspo wants the
# sequence level, vespo builds its own sequence weight from token ratios, and a sequence ratio under a
# token-sum reduction weights each sequence by its length); r3fast refuses them. Pinned to the kernel's
# `LossType.levels` by a test (this module imports no torch).
RATIO_LEVELS = {"grpo": ("token", "sequence"), "bnpo": ("token",), "dr_grpo": ("token",),
                "dapo": ("token",), "cispo": ("token",), "sapo": ("token", "sequence"),
                "luspo": ("sequence",), "vespo": ("token",)}  # fmt: skip


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
    impl: Literal["auto", "triton", "triton_atomic", "torch", "triton_splitv"] = field(
        default="auto", metadata=FREE_ON_RESUME
    )
    """Span-loss implementation: auto (triton on CUDA, else torch); triton = Triton forward + split-V
    backward (deterministic); triton_atomic = the tiled backward with fp32 atomics; torch = chunked.
    triton_splitv is the old name of triton (read as triton)."""

    def _check(self) -> None:
        if self.impl == "triton_splitv":  # the old name of the default Triton path
            self.impl = "triton"
        self._need("beta", self.beta >= 0, ">= 0")
        self._need("eps_low", 0 <= self.eps_low < 1, "in [0, 1)")
        self._need("eps_high", self.eps_high >= 0, ">= 0")
        self._need("delta", self.delta is None or self.delta > 0, "> 0 or null")
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            self._need(name, getattr(self, name) > 0, "> 0")
        levels = RATIO_LEVELS[self.loss_type]
        if self.importance_sampling_level not in levels:
            raise ConfigError(
                f"loss.importance_sampling_level={self.importance_sampling_level!r} is refused with "
                f"loss_type={self.loss_type!r}, which takes {' or '.join(levels)}"
            )
