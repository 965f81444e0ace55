"""What r3fast wrote into a run directory, so `--overwrite` removes that and nothing else.

`.r3fast-run.json` marks a directory r3fast created (or found empty) and lists the top-level
names it writes, recorded *before* each write (a crash mid-write still leaves the name listed).
A directory without the marker is the user's: `--overwrite` refuses it unless it is empty.
Torch-free: `validate` reads it before anything heavy loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .atomic import write_text_atomic
from .errors import UserError

__all__ = ["LOCK", "MARKER", "claim", "foreign_entries", "is_marked", "remove_written", "written"]

MARKER = ".r3fast-run.json"
LOCK = ".r3fast.lock"
_OWN = {MARKER, LOCK}


def _read(run_dir: Path) -> dict | None:
    p = run_dir / MARKER
    if p.is_symlink() or not p.is_file():
        return None
    try:
        data = json.loads(p.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    names = data.get("written") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return {"written": names}


def is_marked(run_dir: str | Path) -> bool:
    return _read(Path(run_dir)) is not None


def written(run_dir: str | Path) -> list[str]:
    """The top-level names r3fast wrote here ([] for an unmarked directory)."""
    data = _read(Path(run_dir))
    return data["written"] if data else []


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def claim(run_dir: str | Path, names: list[str] | tuple[str, ...] = ()) -> None:
    """Mark `run_dir` as r3fast's (if not yet) and add `names` to what it wrote."""
    run_dir = Path(run_dir)
    have = written(run_dir)
    new = [n for n in names if _safe_name(n) and n not in have]
    if new or not is_marked(run_dir):
        write_text_atomic(run_dir / MARKER, json.dumps({"r3fast_run": 1, "written": have + new}, indent=1))


def _hidden_temp(name: str) -> bool:
    return name.startswith(".") and (".tmp." in name or ".old." in name)


def foreign_entries(run_dir: str | Path) -> list[str]:
    """Entries that are not r3fast's: neither listed, nor its marker/lock, nor a temp of its own."""
    run_dir = Path(run_dir)
    mine = set(written(run_dir)) | _OWN
    return sorted(n for n in os.listdir(run_dir) if n not in mine and not _hidden_temp(n))


def remove_written(run_dir: str | Path) -> list[str]:
    """Delete what r3fast listed as written (symlinks unlinked, never followed); log lines."""
    run_dir = Path(run_dir)
    done = []
    for name in written(run_dir):
        p = run_dir / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)  # rmtree does not follow symlinks inside
        else:
            continue
        done.append(f"overwrite: removed {p}")
    write_text_atomic(run_dir / MARKER, json.dumps({"r3fast_run": 1, "written": []}, indent=1))
    return done


def refuse_unmarked(run_dir: Path, flag: str) -> None:
    raise UserError(
        f"trainer.output_dir {run_dir} was not created by r3fast (no {MARKER}) and is not empty: "
        f"{flag} removes only r3fast's own files; empty it or choose another trainer.output_dir"
    )
