"""r3fast — Reflect, Retry, Reward: GRPO on self-reflections, with fused span kernels.

from r3fast import R3Config, R3Trainer
from r3fast.tasks import make_task
R3Trainer(R3Config(), task=make_task("mine", build_prompt=..., verify=..., examples=[...])).train()
"""

from .config import R3Config
from .models import load_model
from .tasks import get_task, make_task
from .trainer import R3Trainer

__all__ = ["R3Config", "R3Trainer", "get_task", "load_model", "make_task"]
__version__ = "0.1.0"
