"""One run per directory: an advisory `flock` on `<run>/.r3fast.lock`, held for the run's life.

The kernel drops a flock when its holder dies (SIGKILL included), so a crashed run leaves no
stale lock: the file may remain, the lock does not. The file holds the holder's pid, for the
message a second run gets.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .manifest import LOCK

try:
    import fcntl
except ImportError:  # not POSIX: no locking (r3fast targets Linux)
    fcntl = None

__all__ = ["RunLock", "check_unlocked", "lock_run_dir"]

_HELD: set[str] = set()  # lock files this process holds: its own checks must not trip on them


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _busy(run_dir: Path) -> UserError:
    pid = _holder(run_dir / LOCK)
    return UserError(
        f"trainer.output_dir {run_dir} is in use by another r3fast run (pid {pid}); wait for it to "
        "finish or choose another trainer.output_dir"
    )


def check_unlocked(run_dir: str | Path) -> None:
    """`UserError` naming the holder's pid if a live run holds the directory; changes nothing."""
    path = Path(run_dir) / LOCK
    if fcntl is None or not path.is_file() or path.is_symlink() or _key(path) in _HELD:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(Path(run_dir)) from None
    finally:
        os.close(fd)  # closing drops the probe's shared lock


class RunLock:
    """`RunLock(run_dir)` takes the lock (or raises `UserError`); `release()` gives it back."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.fd: int | None = None
        if fcntl is None:
            return
        path = self.run_dir / LOCK
        if path.is_symlink():
            raise UserError(f"{path} is a symlink; remove it")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(self.run_dir) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd, self.key = fd, _key(path)
        _HELD.add(self.key)

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.key)
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path) -> RunLock:
    """Create `run_dir` if needed and take its lock."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"trainer.output_dir {run_dir}: {e.strerror or e}") from None
    return RunLock(run_dir)
