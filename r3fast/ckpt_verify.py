"""Checkpoints are checked before they are trusted; torch-free, so `validate` can run it first.

Every file of a checkpoint is listed in its `trainer_state.json` with a sha256, and that JSON
carries a digest of itself: a truncated, garbled or swapped file, a missing one, an edited
trainer state or a symlink out of the run directory makes the checkpoint corrupt (with the
reason), and `--resume` takes the newest intact one. `latest` is a convenience for people;
checkpoints are found by scanning `checkpoints/step_*`, so a missing or dangling `latest` loses
nothing, and a `latest` holding `..` or an absolute path is never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "CheckpointReport", "check_checkpoint", "file_digests", "find_checkpoint", "seal"]

FORMAT = 2  # 1 (no "format" key): pickled state.pt, never loaded again
STATE = "trainer_state.json"
_OLD = "written by an older r3fast (pickled state), cannot be loaded safely; start a new run"
_cache: dict[tuple, str | None] = {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_digests(ckpt: Path) -> dict[str, str]:
    """sha256 of every file under `ckpt` but the trainer state, by relative path."""
    out = {}
    for root, _, names in os.walk(ckpt):
        for name in names:
            p = Path(root) / name
            rel = p.relative_to(ckpt).as_posix()
            if rel != STATE:
                out[rel] = _sha256(p)
    return dict(sorted(out.items()))


def _self_digest(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal(state: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    """`state` plus the format, the files' digests and its own digest (written last)."""
    out = {**state, "format": FORMAT, "files": file_digests(ckpt)}
    out["sha256"] = _self_digest(out)
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _problem(ckpt: Path, run_dir: Path) -> str | None:
    if ckpt.is_symlink() or not _inside(ckpt, run_dir):
        return "outside the run directory (a symlink), refused"
    try:
        state = json.loads((ckpt / STATE).read_bytes())
    except FileNotFoundError:
        return f"no {STATE}"
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError too
        return f"{STATE} unreadable ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"{STATE} is not an object"
    if "format" not in state:
        return _OLD
    if state.get("sha256") != _self_digest(state):
        return f"{STATE} does not match its digest (edited or garbled)"
    if state["format"] != FORMAT or type(state.get("step")) is not int:
        return f"{STATE} has format {state['format']!r} and step {state.get('step')!r}"
    files = state.get("files")
    if not isinstance(files, dict):
        return f"{STATE} lists no files"
    for rel, digest in files.items():
        p = ckpt / rel
        if p.is_symlink() or not _inside(p, ckpt):
            return f"{rel} points outside the checkpoint, refused"
        if not p.is_file():
            return f"{rel} is missing"
        if _sha256(p) != digest:
            return f"{rel} does not match its sha256 (truncated or garbled)"
    return None


def check_checkpoint(ckpt: str | Path, run_dir: str | Path) -> str | None:
    """None when `ckpt` is intact, else why not (one line). Cached by the files' stat: a resume
    checks in `validate` and again before loading without hashing the weights twice."""
    ckpt, run_dir = Path(ckpt), Path(run_dir)
    try:  # every file's identity: any rewrite, truncation or swap misses the cache
        key = (str(ckpt.resolve()),) + tuple(
            (str(p), st.st_mtime_ns, st.st_size, st.st_ino)
            for p in sorted(ckpt.rglob("*"))
            if (st := p.lstat()) is not None
        )
    except OSError:
        key = None
    if key is not None and key in _cache:
        return _cache[key]
    found = _problem(ckpt, run_dir)
    if key is not None:
        _cache[key] = found
    return found


def _name_step(p: Path) -> int:
    try:
        return int(p.name.removeprefix("step_"))
    except ValueError:
        return -1


class CheckpointReport:
    """The newest intact checkpoint of a run (`path`, None if none) and the ones skipped on the way."""

    def __init__(self, path: Path | None, skipped: list[tuple[Path, str]]) -> None:
        self.path, self.skipped = path, skipped

    def notes(self) -> list[str]:
        out = [f"checkpoint {p.name} is corrupt ({why}): skipped" for p, why in self.skipped]
        if self.path is not None and self.skipped:
            out.append(f"resuming from the newest intact checkpoint, {self.path.name}")
        return out

    def why_none(self) -> str:
        return "; ".join(f"{p.name}: {why}" for p, why in self.skipped) or "none written yet"


def find_checkpoint(run_dir: str | Path) -> CheckpointReport:
    """Scan `checkpoints/step_*` newest first (by the step in the name, which `save_checkpoint`
    writes); the first that passes `check_checkpoint` wins."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    if root.is_symlink() or not root.is_dir():
        return CheckpointReport(None, [])
    skipped = []
    for p in sorted((p for p in root.iterdir() if p.name.startswith("step_")), key=_name_step, reverse=True):
        why = check_checkpoint(p, run_dir)
        if why is None:
            return CheckpointReport(p, skipped)
        skipped.append((p, why))
    return CheckpointReport(None, skipped)
