"""Atomic writes: a reader (or a crash) never sees half a file or half a directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_dir", "publish_dir", "write_text_atomic"]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write through a temp file in the same directory, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class atomic_dir:
    """`with atomic_dir(dest) as tmp:` fill `tmp`; on success it becomes `dest` (replacing it)."""

    def __init__(self, dest: str | Path) -> None:
        self.dest = Path(dest)

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp.", dir=self.dest.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        publish_dir(self.tmp, self.dest)


def publish_dir(tmp: str | Path, dest: str | Path) -> None:
    """Rename the finished directory `tmp` to `dest`, replacing what is there."""
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists():  # move the old one aside first: rename onto a non-empty dir fails
        old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
