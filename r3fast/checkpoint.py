"""Atomic, resumable checkpoints: model (safetensors), optimiser, scheduler, RNG, trainer state.

A checkpoint is written to a temp directory and renamed into place, then `latest` is replaced
(also by rename): a crash at any moment leaves the previous checkpoint intact and findable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from .atomic import atomic_dir, write_text_atomic

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write `run_dir/checkpoints/step_XXXXXXXX` atomically, point `latest` at it, prune old ones."""
    ckpt_root = Path(run_dir) / "checkpoints"
    dest = ckpt_root / f"step_{step:08d}"
    with atomic_dir(dest) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
            tmp / "state.pt",
        )
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1))
    write_text_atomic(ckpt_root / "latest", dest.name)
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "latest"
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def load_checkpoint(
    path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the trainer state (with `step`)."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if not _is_tied(model, k)]:
        raise RuntimeError(
            f"{path}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
        )
    state = torch.load(path / "state.pt", weights_only=False)  # our own file: RNG states are not tensors
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied
