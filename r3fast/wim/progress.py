"""A progress bar over segments that shows how many relevant margins were found so far."""

from __future__ import annotations

from r3fast.progress import progress_bar
from r3fast.wim.reading import Margin

__all__ = ["MarginProgress"]


class MarginProgress:
    """``with MarginProgress(n_segments) as bar: bar.update(margin)`` — one tick per segment.

    A tqdm bar on a terminal, one line per segment when output is redirected (`r3fast.progress`).
    """

    def __init__(self, total: int, *, desc: str = "WiM reading", disable: bool = False) -> None:
        self.bar = progress_bar(total=total, desc=desc, unit="seg", enabled=not disable, leave=False)
        self.relevant = 0

    def update(self, margin: Margin) -> None:
        self.relevant += margin.relevant
        self.bar.set_postfix(relevant=self.relevant)
        self.bar.update(1)

    def __enter__(self) -> MarginProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
