"""Optimiser and learning-rate schedule from `OptimConfig`."""

from __future__ import annotations

import math

import torch

from .config import OptimConfig

__all__ = ["LRSchedule", "apply_optim_changes", "build_optimizer", "build_scheduler"]


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise RuntimeError(
                "optim.optimizer=adamw8bit needs bitsandbytes (`pip install bitsandbytes`)"
            ) from e
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class LRSchedule:
    """Linear warm-up to the peak lr, then constant / linear / cosine decay to 0 at `total_steps`.

    Advances once per trainer step, whether or not that step updated the weights (a step whose
    groups all had equal rewards has nothing to learn from, but the schedule still moves on).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> None:
        self.optimizer, self.cfg, self.total_steps = optimizer, cfg, total_steps
        self.peak = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        for group, peak in zip(self.optimizer.param_groups, self.peak):
            group["lr"] = peak * self.factor(self.step_count)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "peak": self.peak}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.peak = state["step_count"], list(state["peak"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRSchedule:
    return LRSchedule(optimizer, cfg, total_steps)


def apply_optim_changes(optimizer: torch.optim.Optimizer, scheduler: LRSchedule, cfg: OptimConfig) -> None:
    """A checkpoint restores the saved lr peak, betas and weight decay; an allowed change of any of
    them on resume (`allow_config_change`) must win over the saved values, not be ignored."""
    for group in optimizer.param_groups:
        group["betas"], group["weight_decay"] = tuple(cfg.betas), cfg.weight_decay
    sched = scheduler.state_dict()
    sched["peak"] = [cfg.lr] * len(sched["peak"])
    scheduler.load_state_dict(sched)
