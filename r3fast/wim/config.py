"""`WimConfig`: the knobs of one WiM reading, in tokens."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WimConfig"]


@dataclass(kw_only=True)
class WimConfig:
    segment_tokens: int = 512
    """Most document tokens per segment; a segment ends at the last newline that fits, if any."""
    margin_tokens: int = 100
    """Generation cap of one margin (the paper: ~100), tokens."""
    answer_tokens: int = 64
    """Generation cap of the final answer, tokens."""
    classify: bool = True
    """Run the second pass that keeps only relevant margins; False keeps every non-empty margin."""
    min_segment_fraction: float = 0.5
    """A newline cut is only taken in the last (1 - this) share of a segment's budget."""

    def __post_init__(self) -> None:
        for name in ("segment_tokens", "margin_tokens", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.min_segment_fraction <= 1:
            raise ValueError(f"min_segment_fraction must be in (0, 1], got {self.min_segment_fraction}")
