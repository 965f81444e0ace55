"""Per-step metrics: `metrics.jsonl` always; TensorBoard and W&B when asked for.

`metrics.jsonl` is strict JSON, one object per line: a non-finite float (a diverged loss) is
written as `null`, and the record lists those keys under `"nonfinite"` (e.g. `["loss",
"grad_norm"]`), so every line parses with any JSON reader and nothing is silently lost.
A crash can tear the last line; reading skips it, and a resume rewrites the file without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .metric_schema import check_keys
from .validate import need_package

__all__ = ["MetricsLogger", "peak_memory_mb", "read_metrics", "reporter_status", "strict_record"]

_EXTRA = {"tensorboard": "pip install 'r3fast[tensorboard]'", "wandb": "pip install 'r3fast[wandb]'"}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def strict_record(record: dict) -> dict:
    """`record` with non-finite floats replaced by None and their keys listed under "nonfinite"."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}


def read_metrics(path: str | Path) -> list[dict]:
    """Every record; a torn (unparseable) last line, the trace of a crash mid-write, is skipped.
    A bad line anywhere else is corruption and raises with its line number."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # one line naming the place, not a traceback
        raise UserError(f"{path}: not UTF-8 (byte offset {e.start}); the metrics file is corrupt") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    out = []
    for j, (i, line) in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if j == len(lines) - 1:
                break
            raise UserError(f"{path}:{i}: not a JSON line (the metrics file is corrupt)") from None
    return out


def reporter_status(reporters: list[str]) -> dict[str, bool]:
    """Which sinks can run here, decided without importing them."""
    have = {"jsonl": True}
    have["tensorboard"] = importlib.util.find_spec("tensorboard") is not None
    have["wandb"] = importlib.util.find_spec("wandb") is not None
    return {r: have[r] for r in reporters}


def check_reporters(report_to: list[str]) -> None:
    """W&B when asked for and missing is an error; TensorBoard (on by default) is only reported off."""
    if "wandb" in report_to:
        need_package("wandb")


class MetricsLogger:
    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        resume_step: int | None = None,
        report_to: list[str] | None = None,
        wandb_project: str = "r3fast",
        config: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            # Steps logged after the checkpoint we resume from will be run again: drop them.
            kept = [m for m in read_metrics(self.path) if m.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(strict_record(m), allow_nan=False) + "\n" for m in kept))
        elif self.path.exists():
            self.path.unlink()
        if report_to is None:
            report_to = ["jsonl"] + (["tensorboard"] if tensorboard else [])
        check_reporters(report_to)
        self.status = reporter_status(report_to)
        self.tb = self.wandb = None
        if self.status.get("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.status.get("wandb"):
            import wandb  # imported only when asked for

            self.wandb = wandb.init(
                project=wandb_project,
                dir=str(self.run_dir),
                config=config or {},
                name=self.run_dir.name,
                id=_wandb_id(self.run_dir),
                resume="allow",
            )

    def describe(self) -> str:
        """One line for the start of a run: each sink on or off, and how to turn an off one on."""
        parts = []
        for name, on in self.status.items():
            parts.append(f"{name} on" if on else f"{name} off (not installed: {_EXTRA[name]})")
        return "metrics: " + ", ".join(parts)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        check_keys(metrics)  # every key is defined once, in r3fast.metric_schema
        record = strict_record({"step": step, **metrics})
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        scalars = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(run_dir: Path) -> str:
    """A W&B run id stored in the run directory, so a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if not path.is_file():
        import uuid

        path.write_text(uuid.uuid4().hex[:16])
    return path.read_text().strip()
