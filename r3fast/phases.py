"""Where a step's time goes: wall seconds and tokens per named phase (r3fast.metric_schema.PHASES).

The code doing the work marks it (`with phase("retry") as p: ...; p.tokens += n`) and the loop
takes the totals once per logged step (`take_phases()`), so nothing has to thread a timer through
every call. One clock per process, like torch's profiler: the loop runs one trainer at a time. On
CUDA a phase ends with a device synchronize, so kernels launched in one phase are not billed to the
next (a few syncs per step, against steps of seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .metric_schema import PHASES

__all__ = ["Phase", "phase", "take_phases"]


@dataclass
class Phase:
    name: str
    tokens: int = 0
    """What the phase processed: tokens generated (mining, reflections, retries), tokens through the
    model (reference, old log-probs, forward+backward), calls (verify); 0 where nothing is counted."""


_SECONDS: dict[str, float] = {}
_TOKENS: dict[str, int] = {}
_OPEN: list[str] = []


def _cuda_sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def phase(name: str) -> Iterator[Phase]:
    """Bill the block's wall time (and the tokens it adds to the yielded `Phase`) to `name`. Inside
    another phase it bills nothing: the outer one owns the time (a periodic evaluation's reflections
    are evaluation, not rollout)."""
    if name not in PHASES:
        raise KeyError(f"unknown phase {name!r}; the phases are {', '.join(PHASES)}")
    rec = Phase(name)
    if _OPEN:
        yield rec
        return
    _OPEN.append(name)
    _cuda_sync()
    t0 = time.perf_counter()
    try:
        yield rec
    finally:
        _cuda_sync()
        _SECONDS[name] = _SECONDS.get(name, 0.0) + (time.perf_counter() - t0)
        _TOKENS[name] = _TOKENS.get(name, 0) + int(rec.tokens)
        _OPEN.pop()


def take_phases() -> dict[str, float | int]:
    """`phase_<name>_s` and `phase_<name>_tokens` for every phase since the last call (0 for a phase
    that did not run), then start afresh."""
    if _OPEN:
        raise RuntimeError(f"take_phases() inside phase {_OPEN[-1]!r}")
    out: dict[str, float | int] = {}
    for name in PHASES:
        out[f"phase_{name}_s"] = _SECONDS.get(name, 0.0)
        out[f"phase_{name}_tokens"] = _TOKENS.get(name, 0)
    _SECONDS.clear()
    _TOKENS.clear()
    return out
