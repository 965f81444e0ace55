"""Pack `context + reflection` sequences into token-budget rows (first-fit-decreasing).

A packed row concatenates whole sequences; `position_ids` restart at 0 per sequence and
`cu_seqlens` marks the boundaries, so attention backends can keep every sequence to itself.
Loss bookkeeping (targets, span mask, advantages, sampler log-probs) is laid out per token here,
once, so the loss kernel only ever sees flat `[T]` tensors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

__all__ = ["IGNORE_INDEX", "PackedBatch", "StepPlan", "TrainSequence", "pack_sequences", "plan_step"]

IGNORE_INDEX = -100  # target of positions with no next token in their own sequence


@dataclass(kw_only=True)
class TrainSequence:
    """One training sequence: the exact sampler token ids of context + reflection."""

    input_ids: list[int]
    """context + reflection token ids, exactly as the sampler produced them."""
    span_start: int
    """index in `input_ids` of the first reflection token (>= 1: some token must predict it)."""
    span_end: int
    """exclusive end of the reflection span; normally `len(input_ids)`."""
    advantage: float
    """GRPO advantage of this sequence's reflection."""
    group_id: int = 0
    """sequences of one group share the prefix `input_ids[:span_start]`."""
    sampler_logp: list[float] | None = None
    """optional log-prob the sampler gave each span token (`span_end - span_start` values): the
    sampler/learner mismatch correction compares it with the learner's own."""

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if not 1 <= self.span_start <= self.span_end <= n:
            raise ValueError(
                f"need 1 <= span_start <= span_end <= len(input_ids), got span_start={self.span_start}, "
                f"span_end={self.span_end}, len(input_ids)={n}"
            )
        if self.sampler_logp is not None and len(self.sampler_logp) != self.span_len:
            raise ValueError(
                f"sampler_logp has {len(self.sampler_logp)} values, the span has {self.span_len} tokens"
            )

    @classmethod
    def from_parts(
        cls,
        prefix: list[int],
        reflection: list[int],
        advantage: float,
        *,
        group_id: int = 0,
        sampler_logp: list[float] | None = None,
    ) -> TrainSequence:
        """`prefix + reflection`, the span being exactly the reflection."""
        return cls(
            input_ids=prefix + reflection,
            span_start=len(prefix),
            span_end=len(prefix) + len(reflection),
            advantage=advantage,
            group_id=group_id,
            sampler_logp=sampler_logp,
        )

    @property
    def span_len(self) -> int:
        return self.span_end - self.span_start

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(kw_only=True)
class PackedBatch:
    """One packed row of T tokens holding S whole sequences (all tensors flat, no batch dim)."""

    input_ids: torch.Tensor  # [T] long
    position_ids: torch.Tensor  # [T] long, 0.. per sequence
    cu_seqlens: torch.Tensor  # [S+1] int32, sequence boundaries (flash-attn varlen convention)
    max_seqlen: int  # longest sequence in the row
    targets: torch.Tensor  # [T] long, next token of the same sequence, IGNORE_INDEX where none
    span_mask: torch.Tensor  # [T] bool, position predicts a reflection token
    advantages: torch.Tensor  # [T] float32, sequence advantage on span positions, 0 elsewhere
    seq_index: torch.Tensor  # [T] long, index of the source sequence in the packer's input (-1: padding)
    sampler_logp: torch.Tensor | None = None  # [M] float32, M = span_mask.sum(), in span-position order
    # [T] long or None. Set only for shared-prefix rows (prefix.py): 0 = group prefix (trunk),
    # k > 0 = k-th reflection branch of its block, which sees the trunk and itself only.
    branch_ids: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_sequences(self) -> int:
        return int(self.cu_seqlens.numel()) - 1

    @property
    def num_span_tokens(self) -> int:
        return int(self.span_mask.sum())  # host-device sync when on GPU

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return PackedBatch(**moved)


@dataclass(kw_only=True, frozen=True)
class StepPlan:
    """Loss normalisers for one optimiser step, known before its first micro-batch runs."""

    num_span_tokens: int
    """total reflection tokens in the step (dapo divides by this)."""
    num_sequences: int
    """sequences in the step (grpo averages per sequence, then over these)."""
    max_span_len: int
    """longest reflection span in the step (dr_grpo divides by num_sequences * this)."""


def plan_step(seqs: Sequence[TrainSequence]) -> StepPlan:
    """Step-wide normalisers, so micro-batch losses sum to the full-step loss whatever the packing."""
    if not seqs:
        raise ValueError("plan_step needs at least one sequence")
    spans = [s.span_len for s in seqs]
    return StepPlan(num_span_tokens=sum(spans), num_sequences=len(seqs), max_span_len=max(spans))


def first_fit_decreasing(
    lengths: Sequence[int], max_tokens: int, *, seed: int | None = None
) -> list[list[int]]:
    """Bin indices of `lengths` into rows of at most `max_tokens` (FFD: longest first, first row that fits).

    seed=None: ties by index, rows in creation order (fully deterministic).
    seed=k: ties and row order shuffled by a private RNG (deterministic for k).
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(
                f"sequence {i} has {n} tokens > max_tokens={max_tokens}; raise max_tokens or drop it "
                "(it is never cut: that would silently truncate a reflection span)"
            )
    rng = random.Random(seed) if seed is not None else None
    tie = [rng.random() for _ in lengths] if rng else list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tie[i]))
    rows: list[list[int]] = []
    free: list[int] = []  # free[r]: tokens left in row r
    for i in order:
        n = lengths[i]
        for r, f in enumerate(free):
            if n <= f:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(max_tokens - n)
    if rng:
        rng.shuffle(rows)
    return rows


class RowColumns:
    """The per-token columns of one packed row, appended segment by segment (plain rows and
    shared-prefix rows lay out their segments differently, then build the batch here)."""

    def __init__(self, seqs: Sequence[TrainSequence]) -> None:
        have = [s.sampler_logp is not None for s in seqs]
        if any(have) and not all(have):
            raise ValueError("sampler_logp must be given for every sequence of a row or for none")
        self.with_sampler = bool(have) and all(have)
        self.ids: list[int] = []
        self.pos: list[int] = []
        self.tgt: list[int] = []
        self.span: list[bool] = []
        self.adv: list[float] = []
        self.src: list[int] = []
        self.branch: list[int] = []
        self.sampler: list[float] = []

    def add(
        self, ids: list[int], first_pos: int, targets: list[int], span: list[bool], adv: float, src: int,
        branch: int = 0,
    ) -> None:  # fmt: skip
        """One segment: its tokens, positions from first_pos, next-token targets, span flags; the
        advantage on span positions; its source sequence (-1: shared) and branch id."""
        n = len(ids)
        self.ids += ids
        self.pos += range(first_pos, first_pos + n)
        self.tgt += targets
        self.span += span
        self.adv += [adv if f else 0.0 for f in span]
        self.src += [src] * n
        self.branch += [branch] * n

    def add_sampler_logp(self, seq: TrainSequence) -> None:
        if self.with_sampler:
            self.sampler += seq.sampler_logp

    def batch(self, cu: list[int], *, tree: bool) -> PackedBatch:
        return PackedBatch(
            input_ids=torch.tensor(self.ids, dtype=torch.long),
            position_ids=torch.tensor(self.pos, dtype=torch.long),
            cu_seqlens=torch.tensor(cu, dtype=torch.int32),
            max_seqlen=max(b - a for a, b in zip(cu, cu[1:])),
            targets=torch.tensor(self.tgt, dtype=torch.long),
            span_mask=torch.tensor(self.span, dtype=torch.bool),
            advantages=torch.tensor(self.adv, dtype=torch.float32),
            seq_index=torch.tensor(self.src, dtype=torch.long),
            sampler_logp=torch.tensor(self.sampler, dtype=torch.float32) if self.with_sampler else None,
            branch_ids=torch.tensor(self.branch, dtype=torch.long) if tree else None,
        )


def build_row(seqs: Sequence[TrainSequence], indices: Sequence[int]) -> PackedBatch:
    """Lay out the sequences `seqs[i] for i in indices` back to back in one row."""
    cols, cu = RowColumns([seqs[i] for i in indices]), [0]
    for i in indices:
        s = seqs[i]
        n = len(s.input_ids)
        # position t predicts token t+1: the span positions are [span_start-1, span_end-1)
        lo, hi = s.span_start - 1, s.span_end - 1
        cols.add(
            s.input_ids, 0, s.input_ids[1:] + [IGNORE_INDEX], [lo <= t < hi for t in range(n)], s.advantage, i
        )
        cols.add_sampler_logp(s)
        cu.append(cu[-1] + n)
    return cols.batch(cu, tree=False)


def pack_sequences(
    seqs: Sequence[TrainSequence], max_tokens: int, *, seed: int | None = None
) -> list[PackedBatch]:
    """Pack whole sequences into rows of <= max_tokens tokens (first-fit-decreasing).

    A sequence longer than max_tokens raises ValueError naming it; nothing is ever truncated.
    """
    if not seqs:
        return []
    rows = first_fit_decreasing([len(s.input_ids) for s in seqs], max_tokens, seed=seed)
    return [build_row(seqs, r) for r in rows]
