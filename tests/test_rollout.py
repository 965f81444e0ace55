"""Rollout bookkeeping: group advantages as TRL computes them, the sequences a group becomes, and
masking reflections cut at the length cap."""

from __future__ import annotations

import statistics

import pytest

from r3fast.failure_file import Failure
from r3fast.rollout import Group, RolloutResult, group_advantages, to_sequences
from r3fast.sampling import Completion


def test_group_advantages_are_trl_standardised():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0]
    adv = group_advantages(rewards)
    mean, std = statistics.mean(rewards), statistics.stdev(rewards)  # unbiased, as TRL
    assert adv == pytest.approx([(r - mean) / (std + 1e-4) for r in rewards])
    assert group_advantages([1.0, 1.0]) == [0.0, 0.0]


def group(finishes: list[str], rewards: list[float]) -> Group:
    comps = [Completion(text="r", token_ids=[7 + i, 8], logprobs=[-1.0, -2.0], finish_reason=f)
             for i, f in enumerate(finishes)]  # fmt: skip
    fail = Failure(example={}, attempt="x")
    return Group(failure=fail, prompt_ids=[1, 2, 3], reflections=comps, retries=["a"] * len(comps),
                 rewards=rewards, advantages=group_advantages(rewards))  # fmt: skip


def test_sequences_are_prefix_plus_reflection_with_the_group_advantage():
    g = group(["stop", "length", "stop"], [1.0, 0.0, 0.0])
    seqs = to_sequences([g])
    assert [s.input_ids for s in seqs] == [[1, 2, 3, 7, 8], [1, 2, 3, 8, 8], [1, 2, 3, 9, 8]]
    assert all(s.span_start == 3 and s.span_end == 5 for s in seqs)
    assert [s.advantage for s in seqs] == pytest.approx(g.advantages)
    assert seqs[0].sampler_logp == [-1.0, -2.0]


def test_truncated_reflections_get_no_loss_but_keep_their_advantages():
    g = group(["stop", "length", "stop", "length"], [1.0, 1.0, 0.0, 0.0])
    kept = to_sequences([g], mask_truncated=True)
    assert len(kept) == 2 and [s.input_ids[3] for s in kept] == [7, 9]  # the 1st and 3rd reflections
    assert [s.advantage for s in kept] == pytest.approx([g.advantages[0], g.advantages[2]])
    m = RolloutResult(groups=[g]).metrics()
    assert m["reflection_truncated_frac"] == 0.5 and m["groups_with_signal"] == 1
