"""Run directories that cannot lose data, checked without importing torch.

- A fresh run refuses a non-empty directory (`--resume` continues it, `--overwrite` replaces the
  run's own artefacts, listed in its manifest, and nothing else; r3fast.manifest). A directory
  r3fast did not create is refused unless empty; `/`, the home and current directories and
  their parents never. A run killed before its first checkpoint starts again without flags.
- Interrupted atomic writes leave `.<name>.tmp.*` entries (and, if killed between the two renames
  of a replacement, `.<name>.old.*`); start-up removes the first and puts the second back.
- `--resume` compares the saved config with the new one: only the fields marked `FREE_ON_RESUME` in
  r3fast.config (`MAY_CHANGE`: how the run is driven, not what it computes) may differ unless
  `--allow-config-change`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .ckpt_verify import find_checkpoint
from .config import may_change_on_resume, upgrade
from .errors import UserError
from .manifest import LOCK, MARKER, claim, foreign_entries, is_marked, refuse_unmarked, remove_written
from .runlock import check_unlocked

__all__ = [
    "MAY_CHANGE",
    "can_create_in",
    "check_path",
    "check_resume_config",
    "check_run_dir",
    "clean_stale",
    "config_changes",
    "latest_checkpoint",
    "prepare_run_dir",
    "restarts",
    "saved_config",
]

# Fields a resumed run may change freely: the config's fields marked FREE_ON_RESUME.
MAY_CHANGE = may_change_on_resume()
# What a run writes into its directory (with eval_*.json and *.png); --overwrite removes what the
# manifest (r3fast.manifest) lists, never a name of this list that r3fast did not write.
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
    """The newest intact checkpoint (found by scanning, verified), or None."""
    return find_checkpoint(run_dir).path


def saved_config(run_dir: str | Path) -> dict | None:
    """The config recorded with the newest intact checkpoint (None without one); a checkpoint
    that records none cannot be compared and is refused."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    cfg = json.loads((ckpt / "trainer_state.json").read_bytes()).get("config")
    if not isinstance(cfg, dict):
        raise UserError(f"--resume: checkpoint {ckpt} records no config, so the resume cannot be checked")
    return cfg


def _is_ours(name: str) -> bool:
    """A name r3fast writes (for collisions only: deletion goes by the manifest)."""
    evals = name.startswith("eval_") and name.endswith(".json")  # eval_<vanilla|trained>_<decoding>.json
    return name in ARTEFACTS or name.endswith(".png") or evals


def _forbidden(run_dir: Path) -> str | None:
    """Directories a run must never own: they hold far more than a run."""
    try:
        here = run_dir.resolve()
        cwd, home = Path.cwd().resolve(), Path.home().resolve()
    except (OSError, RuntimeError, KeyError):
        return None
    repo = Path(__file__).resolve().parents[1]
    if here == Path(here.anchor):
        return "the file system root"
    if here == home or here in home.parents:
        return "the home directory" if here == home else "a parent of the home directory"
    if here == cwd or here in cwd.parents:
        return "the current directory" if here == cwd else "a parent of the current directory"
    if here == repo or here in repo.parents:
        return "the r3fast source tree or a parent of it"
    return None


def check_path(run_dir: str | Path) -> None:
    """One line for a path the OS would choke on, before anything touches it."""
    text = str(run_dir)
    if "\0" in text:
        raise UserError(f"trainer.output_dir {text!r} contains a NUL byte")
    raw = os.fsencode(text)
    if len(raw) > 4000 or any(len(part) > 255 for part in raw.split(b"/")):
        raise UserError(
            f"trainer.output_dir {text[:60]}...: too long (a name over 255 bytes or a path over 4000)"
        )
    why = _forbidden(Path(text))
    if why:
        raise UserError(f"trainer.output_dir {text} is {why}: choose a directory of its own for the run")


def _entries(run_dir: Path) -> list[str]:
    """What makes a directory not empty: anything but r3fast's marker, lock and temp files."""
    if not run_dir.is_dir():
        return []
    return foreign_entries(run_dir) if is_marked(run_dir) else [
        n for n in os.listdir(run_dir) if n not in (MARKER, LOCK)
    ]  # fmt: skip


def _has_checkpoints(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(p.name.startswith("step_") for p in root.iterdir())


def restarts(run_dir: str | Path, *, resume: bool, overwrite: bool) -> bool:
    """Whether this run starts over in a directory r3fast used: --overwrite, or a run killed
    before its first checkpoint (started again, or --resume'd from step 0)."""
    run_dir = Path(run_dir)
    if not is_marked(run_dir):
        return False
    if resume:
        return find_checkpoint(run_dir).path is None and not _has_checkpoints(run_dir)
    return overwrite or not _has_checkpoints(run_dir)


def check_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Raise `UserError` if this run may not use `run_dir`; changes nothing."""
    check_path(run_dir)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"trainer.output_dir {run_dir} exists and is not a directory")
    check_unlocked(run_dir)
    if resume:
        report = find_checkpoint(run_dir)
        if report.path is None and report.skipped:
            where = run_dir / "checkpoints"
            raise UserError(f"--resume: no intact checkpoint under {where}: {report.why_none()}")
        if report.path is None and not restarts(run_dir, resume=True, overwrite=False):
            raise UserError(
                f"--resume: no checkpoint under {run_dir / 'checkpoints'}; start without --resume"
            )
        return
    entries = _entries(run_dir)
    if entries and not is_marked(run_dir):
        if overwrite:
            refuse_unmarked(run_dir, "--overwrite")
        raise UserError(
            f"trainer.output_dir {run_dir} is not empty: pass --resume to continue that run, --overwrite "
            "to replace it, or choose another trainer.output_dir"
        )
    if is_marked(run_dir) and not restarts(run_dir, resume=False, overwrite=overwrite):
        raise UserError(
            f"trainer.output_dir {run_dir} holds a run with checkpoints: pass --resume to continue it, "
            "--overwrite to replace it, or choose another trainer.output_dir"
        )
    clash = [n for n in entries if _is_ours(n)]
    if clash:  # files of the user's where the run would write: never replaced, never deleted
        raise UserError(
            f"trainer.output_dir {run_dir}: {', '.join(clash[:5])} not written by r3fast would be replaced "
            "by this run; move them or choose another trainer.output_dir"
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
                if not dest.exists() and not dest.is_symlink():
                    os.rename(p, dest)
                    done.append(f"restored {dest}")
                    continue
            elif ".tmp." not in p.name:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            done.append(f"removed {p}")
    return done


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> list[str]:
    """`check_run_dir`, then make the directory ready (the caller holds its lock): r3fast's
    marker in place, stale temp files gone, and on a restart the run's own files removed.
    Returns log lines."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"trainer.output_dir {run_dir}: {e.strerror or e}") from None
    if not is_marked(run_dir) and not _entries(run_dir):
        claim(run_dir)
    done = clean_stale(run_dir)
    if restarts(run_dir, resume=resume, overwrite=overwrite):
        if resume:
            done.append("resume: no checkpoint was written yet, starting from step 0")
        done += remove_written(run_dir)
    elif resume:
        done += find_checkpoint(run_dir).notes()
    with tempfile.TemporaryFile(dir=run_dir):  # writable, really (os.access can be wrong on NFS/ACLs)
        pass
    return done


def _flat(cfg: dict) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, fields in cfg.items() if isinstance(fields, dict) for k, v in fields.items()}


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) for every field outside `MAY_CHANGE` that differs. Both
    configs as `R3Config.to_dict()` (a saved one with old field names read under the new ones);
    tuples and lists compare equal (JSON has no tuples)."""
    old, cur = _flat(json.loads(json.dumps(upgrade(saved)[0]))), _flat(json.loads(json.dumps(new)))
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
