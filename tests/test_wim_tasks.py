"""Long-context task generators (multihop, CWE): solvable, seeded, split; verifiers never raise."""

from __future__ import annotations

import random

import pytest

from r3fast.stats import bootstrap_mean, paired_bootstrap, wilson
from r3fast.tasks import get_task
from r3fast.tasks.cwe import CWETask, f1
from r3fast.tasks.cwe import solve as solve_cwe
from r3fast.tasks.multihop import MultiHopTask
from r3fast.tasks.multihop import solve as solve_multihop
from r3fast.wim.segments import split_segments, tokenize_document

GARBAGE = [None, 3, "", "\x00" * 50, "é" * 10_000, "Lisbon " * 5000, ["Lisbon"], {"a": 1}]
BAD_EXAMPLES = [
    {},
    {"answer": None},
    {"answer": 3, "candidates": None},
    {"vocabulary": 1, "answer": [1]},
    None,
]


@pytest.mark.parametrize("context_tokens,chains", [(256, 1), (1024, 4), (4096, 8)])
def test_multihop_is_solvable_from_the_text(context_tokens, chains):
    task = MultiHopTask(context_tokens=context_tokens, chains=chains)
    for ex in task.dataset(8, seed=1, split="eval"):
        assert solve_multihop(ex["context"], ex["question"]) == ex["answer"]
        assert len(set(ex["candidates"])) == chains and ex["answer"] in ex["candidates"]
        assert f"{ex['person']} works for {ex['company']}" in ex["context"]
        assert task.verify(ex, f"The headquarters are in {ex['answer'].upper()}.")
        for other in ex["candidates"]:
            if other != ex["answer"]:
                assert not task.verify(ex, other)
                assert not task.verify(ex, f"{ex['answer']} or {other}")  # naming every city fails


def test_cwe_is_solvable_and_scored_by_f1():
    task = CWETask(context_tokens=2048, num_common=5, common_freq=12, uncommon_freq=3)
    for ex in task.dataset(6, seed=2, split="train"):
        assert sorted(solve_cwe(ex["context"], 5)) == ex["answer"]
        gold = ex["answer"]
        assert task.score(ex, ", ".join(gold)) == 1.0 and task.verify(ex, ", ".join(gold).upper())
        assert task.score(ex, ", ".join(gold[:3])) == pytest.approx(f1(set(gold[:3]), set(gold)))
        wrong = next(w for w in ex["vocabulary"] if w not in gold)
        assert task.score(ex, ", ".join([*gold, wrong])) == pytest.approx(2 * 5 / 11)
        assert not task.verify(ex, ", ".join(ex["vocabulary"]))  # listing every word is not an answer


@pytest.mark.parametrize("task", [MultiHopTask(context_tokens=300), CWETask(context_tokens=2048)])
def test_verifiers_never_raise(task):
    good = task.dataset(1, seed=0)[0]
    rng = random.Random(0)
    for ex in [good, *BAD_EXAMPLES]:
        for completion in GARBAGE + ["".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(300))]:
            s = task.score(ex, completion)
            assert isinstance(s, float) and 0.0 <= s <= 1.0
            assert isinstance(task.verify(ex, completion), bool)


@pytest.mark.parametrize("name", ["multihop", "cwe"])
def test_dataset_is_seeded_and_splits_are_disjoint(name):
    task = get_task(name, context_tokens=2048)
    a, b = task.dataset(4, seed=3, split="eval"), task.dataset(4, seed=3, split="eval")
    assert a == b and task.dataset(2, seed=3, split="eval") == a[:2]
    train = {ex["context"] for ex in task.dataset(20, seed=3, split="train")}
    assert not train & {ex["context"] for ex in a}
    assert task.dataset(4, seed=4, split="eval") != a


@pytest.mark.parametrize("name,target", [("multihop", 1024), ("multihop", 4096), ("cwe", 2048)])
def test_lengths_are_near_the_requested_tokens(smol_tokenizer, name, target):
    ex = get_task(name, context_tokens=target).dataset(1)[0]
    n = len(smol_tokenizer(ex["context"])["input_ids"])
    assert 0.8 * target <= n <= 1.2 * target


def test_bad_options_raise():
    with pytest.raises(ValueError, match="chains"):
        MultiHopTask(chains=0)
    with pytest.raises(ValueError, match="fewer than"):
        CWETask(context_tokens=600)
    with pytest.raises(ValueError, match="common_freq"):
        CWETask(common_freq=3, uncommon_freq=3)


def test_segments_cover_the_document_and_end_at_line_ends(smol_tokenizer):
    text = MultiHopTask(context_tokens=1200).dataset(1)[0]["context"]
    ids, ends = tokenize_document(smol_tokenizer, text)
    segs = split_segments(ends, 200)
    assert [i for s in segs for i in range(s.start, s.stop)] == list(range(len(ids)))
    assert all(s.stop - s.start <= 200 for s in segs)
    assert all(ends[s.stop - 1] for s in segs[:-1])  # paragraphs end with "\n\n": a cut is always found
    assert split_segments([False] * 10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]  # no line ends


def test_intervals():
    assert wilson(0, 20)[0] == 0.0 and 0.1 < wilson(0, 20)[1] < 0.2
    lo, hi = wilson(15, 30)
    assert lo == pytest.approx(0.3315, abs=1e-3) and hi == pytest.approx(0.6685, abs=1e-3)
    assert bootstrap_mean([0.5] * 10) == (0.5, 0.5)
    assert paired_bootstrap([0, 1, 0, 1], [0, 1, 0, 1]) == (0.0, 0.0, 0.0)
    gap, lo, hi = paired_bootstrap([0.0] * 30, [1.0] * 20 + [0.0] * 10)
    assert gap == pytest.approx(2 / 3) and lo < gap < hi
