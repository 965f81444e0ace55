"""The loop's sections: `[checkpoint]`, `[eval]`, `[metrics]` and `[trainer]` (steps, seed, run
directory, data parallelism). No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .config_base import FREE_ON_RESUME, _Section

__all__ = ["REPORTERS", "CheckpointConfig", "EvalConfig", "MetricsConfig", "TrainerConfig"]

REPORTERS = ("jsonl", "tensorboard", "wandb")


@dataclass(kw_only=True)
class CheckpointConfig(_Section):
    """Checkpoints in the run directory (r3fast.checkpoint): how often, how many kept."""

    SECTION: ClassVar[str] = "checkpoint"
    every: int = field(default=50, metadata=FREE_ON_RESUME)
    """Checkpoint every this many steps (0: only at the end)."""
    keep: int = field(default=2, metadata=FREE_ON_RESUME)
    """Checkpoints kept on disk, newest by recorded step."""

    def _check(self) -> None:
        self._need("every", self.every >= 0, ">= 0")
        self._need("keep", self.keep >= 1, ">= 1")


@dataclass(kw_only=True)
class EvalConfig(_Section):
    """Held-out evaluation (r3fast.evaluate): the four-column report before and after training, and
    the periodic curve; `r3fast eval --run` repeats it exactly."""

    SECTION: ClassVar[str] = "eval"
    n: int = 64
    """Held-out examples for the four-column report (0 skips evaluation)."""
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    """Decodings of the final report, each on the same examples (0 is greedy); the first is the
    headline (summary, r3_effect.json, periodic evaluation)."""
    every: int = field(default=0, metadata=FREE_ON_RESUME)
    """Measure a small fixed held-out set every this many steps (0: never); logged and plotted."""
    every_n: int = field(default=16, metadata=FREE_ON_RESUME)
    """Size of that periodic held-out set."""
    problems_seed: int = 0
    """Seed of the held-out problem draw, apart from trainer.seed: runs over several trainer seeds
    are measured on the same problems (their sampling draws still follow trainer.seed)."""

    def _check(self) -> None:
        self._need("n", self.n >= 0, ">= 0")
        self._need("every", self.every >= 0, ">= 0")
        self._need("every_n", self.every_n >= 1, ">= 1")
        self._need("problems_seed", 0 <= self.problems_seed < 2**63, "in [0, 2**63)")
        self._need("temperatures", bool(self.temperatures) and min(self.temperatures) >= 0,
                   "a non-empty list of temperatures >= 0")  # fmt: skip


@dataclass(kw_only=True)
class MetricsConfig(_Section):
    """Where the step metrics go (r3fast.metrics; keys in r3fast.metric_schema) and the progress display."""

    SECTION: ClassVar[str] = "metrics"
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"], metadata=FREE_ON_RESUME)
    """Metric sinks: jsonl (always written) | tensorboard (extra r3fast[tensorboard]) | wandb."""
    wandb_project: str = field(default="r3fast", metadata=FREE_ON_RESUME)
    """W&B project (set WANDB_MODE=offline to log without a network)."""
    progress: bool = field(default=True, metadata=FREE_ON_RESUME)
    """Progress bars on a terminal; one line per update when output is redirected."""
    tensorboard: bool = field(default=True, metadata=FREE_ON_RESUME)
    """Shorthand: false drops tensorboard from report_to."""

    def _check(self) -> None:
        self._need("report_to", set(self.report_to) <= set(REPORTERS), f"a list from {list(REPORTERS)}")

    @property
    def reporters(self) -> list[str]:
        """The sinks in use: jsonl always; tensorboard unless `tensorboard: false`."""
        out = ["jsonl"] + [r for r in self.report_to if r != "jsonl"]
        return [r for r in out if r != "tensorboard" or self.tensorboard]


@dataclass(kw_only=True)
class TrainerConfig(_Section):
    """The loop: how many steps, its seed, the run directory, data parallelism, the NaN guard."""

    SECTION: ClassVar[str] = "trainer"
    steps: int = field(default=100, metadata=FREE_ON_RESUME)
    """Optimiser steps (rollout + update) to run; may be raised on --resume to extend a run."""
    seed: int = 0
    """Seed of sampling, data order and initial RNG state (r3fast.seeds: one stream per use)."""
    output_dir: str = field(default="runs/r3", metadata=FREE_ON_RESUME)
    """Run directory: metrics, checkpoints, final model, report."""
    data_parallel: Literal["ddp", "fsdp2"] = "ddp"
    """Under torchrun (world size > 1): ddp replicates the learner; fsdp2 shards it (fully_shard)."""
    max_nonfinite_steps: int = field(default=3, metadata=FREE_ON_RESUME)
    """Stop after this many consecutive steps skipped for a non-finite loss or grad norm."""
    push_to_hub: str | None = field(default=None, metadata=FREE_ON_RESUME)
    """Hub repo id (org/name) to upload final/ (weights, tokenizer, model card) to after the run."""

    def _check(self) -> None:
        self._need("steps", self.steps >= 1, ">= 1")
        self._need("seed", 0 <= self.seed < 2**63, "in [0, 2**63)")
        self._need("output_dir", bool(self.output_dir.strip()) and "\0" not in self.output_dir,
                   "a directory path (no NUL byte)")  # fmt: skip
        self._need("max_nonfinite_steps", self.max_nonfinite_steps >= 1, ">= 1")
