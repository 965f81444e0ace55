"""r3fast — Reflect, Retry, Reward: GRPO on self-reflections, with fused span kernels.

    from r3fast import R3Config, R3Trainer
    from r3fast.tasks import make_task

    task = make_task(
        "sums",
        build_prompt=lambda ex: [{"role": "user", "content": f"{ex['a']} + {ex['b']} = ? Number only."}],
        verify=lambda ex, text: text.strip() == str(ex["a"] + ex["b"]),
        examples=[{"a": a, "b": b} for a in range(30) for b in range(30)],
    )
    cfg = R3Config()  # no failures file: failures are mined online from the task's train split
    cfg.trainer.steps = 20
    R3Trainer(cfg, task=task).train()  # writes runs/r3/{metrics.jsonl,report.md,final/,...}

Importing the package is light: torch and transformers load on first use of `R3Trainer` or
`load_model`, so the command line validates its arguments before paying for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import R3Config
from .tasks import get_task, make_task

__all__ = ["R3Config", "R3Trainer", "get_task", "load_model", "make_task"]
__version__ = "0.1.0"

_LAZY = {"R3Trainer": ".trainer", "load_model": ".models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'r3fast' has no attribute {name!r}")
