"""pack_step: token budget, every span token covered, seeded order per (seed, step)."""

from __future__ import annotations

import random

import pytest
import torch
from test_data_common import random_groups, single_thread

from r3fast.data import pack_step


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _ids(rows) -> list[list[int]]:
    return [r.seq_index.tolist() for r in rows]


@pytest.mark.parametrize("shared", [False, True])
def test_budget_and_coverage(shared: bool) -> None:
    seqs = random_groups(random.Random(20), 5, 8, (30, 50), (5, 30))
    plan, rows = pack_step(seqs, max_tokens=300, shared_prefix=shared, seed=0, step=0)
    assert all(r.num_tokens <= 300 for r in rows)
    spans = torch.cat([r.seq_index[r.span_mask] for r in rows])
    assert sorted(spans.unique().tolist()) == list(range(len(seqs)))
    assert spans.numel() == sum(s.span_len for s in seqs) == plan.num_span_tokens
    assert plan.num_sequences == len(seqs)
    sizes = {r.num_sequences for r in rows}
    assert len(sizes) > 1 or shared  # dynamic batch size: sequences per micro-batch vary


def test_seeded_order() -> None:
    seqs = random_groups(random.Random(21), 4, 8, (10, 40), (5, 30))
    rows = lambda seed, step: _ids(
        pack_step(seqs, max_tokens=128, shared_prefix=False, seed=seed, step=step)[1]
    )
    assert rows(1, 3) == rows(1, 3)  # a resumed run packs what the straight run packed
    assert rows(1, 3) != rows(1, 4) and rows(1, 3) != rows(2, 3)


def test_bad_budget() -> None:
    seqs = random_groups(random.Random(22), 1, 2, (5, 9), (2, 6))
    with pytest.raises(ValueError, match="max_tokens"):
        pack_step(seqs, max_tokens=0, shared_prefix=False, seed=0, step=0)
