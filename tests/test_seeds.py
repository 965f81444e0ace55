"""Seed streams: pure, distinct across streams and indices, within every RNG's range."""

import random

import torch

from r3fast.seeds import seed_for


def test_seed_streams_are_pure_and_distinct():
    assert seed_for(0, "reflect", 3, 1) == seed_for(0, "reflect", 3, 1)
    # the collision the old offsets had: reflection chunk k + 1 vs retry chunk k of the same step
    seeds = {seed_for(0, s, step, k) for s in ("reflect", "retry", "mine", "eval") for step in range(50)
             for k in range(20)}  # fmt: skip
    assert len(seeds) == 4 * 50 * 20
    assert seed_for(0, "reflect", 1) != seed_for(1, "reflect", 1)
    assert seed_for(0, "a", 12) != seed_for(0, "a", 1, 2)  # indices are not concatenated digits


def test_seeds_fit_every_generator():
    s = max(seed_for(7, "x", i) for i in range(1000))
    assert 0 <= s < 2**62
    torch.Generator().manual_seed(s + 1000 * 64)  # vLLM/HF add per-prompt offsets on top
    random.Random(s)
