"""The NaN/Inf guard: a step whose loss or gradient norm is not finite changes nothing.

Such a step skips `optimizer.step()` entirely (weights and AdamW moments untouched), is logged
with `skipped_nonfinite: true`, and after `limit` consecutive skips the run stops with a
`NonFiniteError`. Weights are checked after every real update and before every save, so a
non-finite tensor never reaches a checkpoint, `latest` or `final/`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import NonFiniteError

__all__ = ["NonFiniteGuard", "weights_finite"]


def weights_finite(model: torch.nn.Module) -> bool:
    # One host-device sync for the whole model, not one per tensor.
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class NonFiniteGuard:
    """Counts consecutive non-finite steps; `state_dict` makes the count survive a resume."""

    def __init__(self, limit: int, kept: Callable[[], str] | None = None) -> None:
        """kept(): what the run directory still holds, said only after checking it (the trainer
        verifies its newest checkpoint); never claimed blindly."""
        self.limit, self.streak = limit, 0
        self.kept = kept or (lambda: "no checkpoint was checked")

    @staticmethod
    def finite(*values: float) -> bool:
        return all(math.isfinite(v) for v in values)

    def record(self, skipped: bool, step: int) -> None:
        """After an update (`skipped=False`) or a skip; raises once `limit` skips run in a row."""
        self.streak = self.streak + 1 if skipped else 0
        if self.streak >= self.limit:
            raise NonFiniteError(
                f"stopped at step {step}: loss or grad norm non-finite for {self.streak} consecutive steps "
                f"(trainer.max_nonfinite_steps={self.limit}); the weights are those of the last finite "
                f"update; {self.kept()}. Lower optim.lr or set learner.grad_clip"
            )

    def check_weights(self, model: torch.nn.Module, what: str) -> None:
        if not weights_finite(model):
            raise NonFiniteError(
                f"{what}: the weights are no longer finite (optim.lr too high?); nothing was saved from "
                f"this point; {self.kept()}"
            )

    def state_dict(self) -> dict:
        return {"streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("streak", 0))
