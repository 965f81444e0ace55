"""Micro-batches of one optimiser step by token budget: dynamic batch size, seeded order, resumable.

A micro-batch is one packed row of <= max_tokens tokens, so the number of sequences per
micro-batch adapts to their lengths (short reflections: many per row). The rows of a step are a
pure function of (sequences, config, step seed); the loader's state is that seed plus a cursor, so a
run restored from a checkpoint mid-step recomputes the same rows and skips the ones already done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..seeds import seed_for
from .packing import PackedBatch, StepPlan, TrainSequence, pack_sequences, plan_step
from .prefix import pack_groups

__all__ = ["LoaderConfig", "StepLoader", "iter_microbatches"]


@dataclass(kw_only=True)
class LoaderConfig:
    max_tokens: int = 8192
    """token budget of one micro-batch (one packed row), tokens."""
    shared_prefix: bool = False
    """store each group's prefix once per row (tree mask); needs a mask backend (flex or sdpa)."""
    seed: int = 0
    """base seed; step k packs with seed (seed, k) so each step has its own, reproducible order."""

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")


def step_seed(seed: int, step: int) -> int:
    """The packing order's seed for one step."""
    return seed_for(seed, "pack", step)


def _fingerprint(seqs: Sequence[TrainSequence]) -> str:
    # Cheap identity of a step's data, to refuse resuming a cursor over different sequences.
    h = hashlib.blake2b(digest_size=8)
    for s in seqs:
        h.update(f"{len(s.input_ids)},{s.span_start},{s.span_end},{s.group_id};".encode())
    return h.hexdigest()


def iter_microbatches(
    seqs: Sequence[TrainSequence], cfg: LoaderConfig, *, step: int = 0, start: int = 0
) -> Iterator[PackedBatch]:
    """The packed rows of one step, from row `start` on (deterministic for cfg.seed and step)."""
    pack = pack_groups if cfg.shared_prefix else pack_sequences
    rows = pack(seqs, cfg.max_tokens, seed=step_seed(cfg.seed, step))
    yield from rows[start:]


class StepLoader:
    """Iterates the micro-batches of one step; `state_dict()` / `load_state_dict()` resume mid-step.

    loader = StepLoader(seqs, cfg, step=k)
    plan = loader.plan                 # loss normalisers for the whole step
    for batch in loader: ...           # forward/backward per micro-batch
    """

    def __init__(self, seqs: Sequence[TrainSequence], cfg: LoaderConfig, *, step: int = 0) -> None:
        self.seqs, self.cfg, self.step = seqs, cfg, step
        self.plan: StepPlan = plan_step(seqs)
        self.cursor = 0  # micro-batches already handed out
        self._rows: list[PackedBatch] | None = None

    @property
    def rows(self) -> list[PackedBatch]:
        if self._rows is None:
            self._rows = list(iter_microbatches(self.seqs, self.cfg, step=self.step))
        return self._rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PackedBatch]:
        while self.cursor < len(self.rows):
            row = self.rows[self.cursor]
            self.cursor += 1
            yield row

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seed": self.cfg.seed,
            "cursor": self.cursor,
            "max_tokens": self.cfg.max_tokens,
            "shared_prefix": self.cfg.shared_prefix,
            "fingerprint": _fingerprint(self.seqs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("step", "seed", "max_tokens", "shared_prefix", "fingerprint"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume: saved {key}={state[key]!r}, this loader has {mine[key]!r}")
        if not 0 <= state["cursor"] <= len(self):
            raise ValueError(f"cursor {state['cursor']} out of range for {len(self)} micro-batches")
        self.cursor = state["cursor"]
