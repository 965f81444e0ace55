"""Progress that suits where it goes: a tqdm bar on a terminal, plain lines in a log file.

Redirected output (a file, a pipe, CI) gets no carriage returns or escape codes: one line when a
bar starts, at most one per tenth of the way for long bars, and one at the end.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

__all__ = ["progress_bar", "quiet_library_bars"]


def _interactive() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def quiet_library_bars() -> None:
    """transformers and huggingface_hub draw their own tqdm bars (loading weights, writing shards):
    turn them off when output is redirected."""
    if _interactive():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()


class LineProgress:
    """The subset of tqdm's interface r3fast uses, printed as whole lines to stderr."""

    def __init__(self, *, total: int, desc: str, unit: str, initial: int = 0, every_update: bool = False):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every_update = every_update
        self.postfix = ""
        self.t0 = time.perf_counter()
        self._next = initial + max(1, total // 10)

    def _print(self) -> None:
        secs = time.perf_counter() - self.t0
        line = f"{self.desc}: {self.n}/{self.total} {self.unit} ({secs:.0f} s){self.postfix}"
        print(line, file=sys.stderr, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.every_update or self.n >= self._next or self.n >= self.total:
            self._next = self.n + max(1, self.total // 10)
            self._print()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = " " + " ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        pass


class _Off:
    def update(self, k: int = 1) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    *,
    total: int,
    desc: str,
    unit: str,
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    every_update: bool = False,
):
    """tqdm on a terminal; `LineProgress` when stdout or stderr is redirected; nothing if disabled.
    `every_update`: in line mode print each update (training steps), not just every tenth."""
    if not enabled:
        return _Off()
    if _interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial, every_update=every_update)
