"""The NaN/Inf guard: a step whose loss or gradient norm is not finite changes nothing.

Such a step skips `optimizer.step()` entirely (weights and AdamW moments untouched), is logged
with `skipped_nonfinite: true`, and after `limit` consecutive skips the run stops with a
`NonFiniteError`. Weights are checked after every real update and before every save, so a
non-finite tensor never reaches a checkpoint, `latest` or `final/`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from .errors import NonFiniteError
from .model.lm import is_sharded_tensor

__all__ = ["NonFiniteGuard", "weights_finite"]


def weights_finite(weights: torch.nn.Module | Iterable[torch.Tensor]) -> bool:
    """Every weight (of a model, or tensors) finite. One host-device sync for all, not one per tensor;
    FSDP2 shards are checked where they live and the verdict is all-reduced (a collective: every rank
    calls it)."""
    params = list(weights.parameters() if isinstance(weights, torch.nn.Module) else weights)
    if not params:
        return True
    sharded = [is_sharded_tensor(p) for p in params]
    local = [p.to_local() if s else p for p, s in zip(params, sharded)]
    ok = torch.stack([torch.isfinite(t).all() for t in local]).all()
    if any(sharded):
        import torch.distributed as dist

        ok = ok.to(torch.int32)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


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

    def check_weights(self, weights: torch.nn.Module | Iterable[torch.Tensor], what: str) -> None:
        if not weights_finite(weights):
            raise NonFiniteError(
                f"{what}: the weights are no longer finite (optim.lr too high?); nothing was saved from "
                f"this point; {self.kept()}"
            )

    def state_dict(self) -> dict:
        return {"streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("streak", 0))
