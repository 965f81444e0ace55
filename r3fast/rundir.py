"""Run directories that cannot lose data, checked without importing torch.

- A fresh run refuses a non-empty directory (`--resume` continues it, `--overwrite` replaces the
  run's own artefacts and nothing else).
- Interrupted atomic writes leave `.<name>.tmp.*` entries (and, if killed between the two renames
  of a replacement, `.<name>.old.*`); start-up removes the first and puts the second back.
- `--resume` compares the saved config with the new one: only the fields in `MAY_CHANGE` (how the
  run is driven, not what it computes) may differ unless `--allow-config-change`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "MAY_CHANGE",
    "can_create_in",
    "check_resume_config",
    "check_run_dir",
    "clean_stale",
    "config_changes",
    "latest_checkpoint",
    "prepare_run_dir",
    "saved_config",
]

# Fields a resumed run may change freely: length, bookkeeping, logging and the machine. Everything
# else changes what the run computes (data, sampling, loss, optimiser, seed, evaluation set).
MAY_CHANGE = frozenset(
    {
        "trainer.steps",
        "trainer.output_dir",
        "trainer.save_every",
        "trainer.keep_checkpoints",
        "trainer.eval_every",
        "trainer.eval_every_n",
        "trainer.max_nonfinite_steps",
        "trainer.report_to",
        "trainer.wandb_project",
        "trainer.progress",
        "trainer.tensorboard",
        "model.device",
        "loss.impl",
        "sampler.max_batch_size",
        "sampler.gpu_memory_utilization",
        "sampler.sync_bucket_mb",
        "sampler.sleep_level",
        "sampler.max_model_len",
    }
)
# What a run writes into its directory; --overwrite removes these and only these.
ARTEFACTS = (
    "checkpoints",
    "final",
    "tensorboard",
    "wandb",
    "metrics.jsonl",
    "config.json",
    "summary.json",
    "report.md",
    "r3_effect.json",
    "wandb_id.txt",
)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "latest"
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def saved_config(run_dir: str | Path) -> dict | None:
    """The config recorded with the latest checkpoint (None without one)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    return json.loads((ckpt / "trainer_state.json").read_text()).get("config")


def _is_ours(p: Path) -> bool:
    evals = p.name.startswith("eval_") and p.suffix == ".json"  # eval_<vanilla|trained>_<decoding>.json
    return p.name in ARTEFACTS or ((p.suffix == ".png" or evals) and p.is_file())


def check_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Raise `UserError` if this run may not use `run_dir`; changes nothing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"trainer.output_dir {run_dir} exists and is not a directory")
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise UserError(
                f"--resume: no checkpoint under {run_dir / 'checkpoints'}; start without --resume"
            )
        return
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise UserError(
            f"trainer.output_dir {run_dir} is not empty: pass --resume to continue that run, --overwrite "
            "to replace it, or choose another trainer.output_dir"
        )
    parent = run_dir if run_dir.is_dir() else next((p for p in run_dir.parents if p.exists()), Path("."))
    if not can_create_in(parent):
        raise UserError(f"trainer.output_dir {run_dir}: {parent} is not writable")


def can_create_in(directory: Path) -> bool:
    """Create and remove a probe file: `os.access` says yes to root everywhere (/proc included)
    and can be wrong on NFS or with ACLs."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".r3fast-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def clean_stale(run_dir: str | Path) -> list[str]:
    """Remove leftovers of interrupted atomic writes; returns what was done, for the log."""
    done = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not p.name.startswith("."):
                continue
            if ".old." in p.name:  # killed between "dest -> old" and "tmp -> dest": put it back
                dest = folder / p.name[1:].split(".old.")[0]
                if not dest.exists():
                    os.rename(p, dest)
                    done.append(f"restored {dest}")
                    continue
            elif ".tmp." not in p.name:
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            done.append(f"removed {p}")
    return done


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> list[str]:
    """`check_run_dir`, then make the directory ready: stale temp files gone, and with
    `overwrite` (no resume) the previous run's artefacts removed. Returns log lines."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = clean_stale(run_dir)
    if overwrite and not resume:
        for p in sorted(run_dir.iterdir()):
            if _is_ours(p):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                done.append(f"overwrite: removed {p}")
    with tempfile.TemporaryFile(dir=run_dir):  # writable, really (os.access can be wrong on NFS/ACLs)
        pass
    return done


def _flat(cfg: dict) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, fields in cfg.items() if isinstance(fields, dict) for k, v in fields.items()}


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) for every field outside `MAY_CHANGE` that differs. Both
    configs as `R3Config.to_dict()`; tuples and lists compare equal (JSON has no tuples)."""
    old, cur = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(new)))
    return [(k, old[k], cur[k]) for k in sorted(cur) if k in old and old[k] != cur[k] and k not in MAY_CHANGE]


def check_resume_config(run_dir: str | Path, new: dict, *, allow: bool) -> list[tuple[str, Any, Any]]:
    """The meaningful changes against the saved config; `UserError` listing them unless `allow`."""
    saved = saved_config(run_dir)
    changes = config_changes(saved, new) if saved else []
    if changes and not allow:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)
        raise UserError(
            f"--resume: the config differs from the run's in fields that change its meaning ({listed}); "
            "pass --allow-config-change to apply them anyway (free to change: trainer.steps, logging, "
            "checkpointing and device fields; see README 'Resuming')"
        )
    return changes
