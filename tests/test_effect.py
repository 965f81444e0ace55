"""The R3 effect's figures from two evaluations of the same problems."""

from __future__ import annotations

import random

import pytest

from r3fast.effect import effect, effect_table
from r3fast.evaluate import EvalResult
from r3fast.stats import wilson


def result(flags: list[tuple[bool, bool | None]]) -> EvalResult:
    """(first_ok, second_ok or None when the first try was right) per problem."""
    records = []
    for i, (first, second) in enumerate(flags):
        r = {"example": {"i": i}, "first_try": "x", "first_ok": first}
        if not first:
            r.update(reflection="r", second_try="y", second_ok=bool(second))
        records.append(r)
    k1 = sum(f for f, _ in flags)
    k2 = k1 + sum(bool(s) for f, s in flags if not f)
    return EvalResult(n=len(flags), first_correct=k1, second_correct=k2, seconds=1.0, records=records)


def test_columns_differences_and_the_conditional_rate():
    vanilla = result([(True, None)] * 20 + [(False, True)] * 10 + [(False, False)] * 70)  # 20 / 30 %
    trained = result([(True, None)] * 40 + [(False, True)] * 30 + [(False, False)] * 30)  # 40 / 70 %
    e = effect(vanilla, trained)
    assert e["n"] == 100
    assert (e["vanilla_first"], e["vanilla_second"], e["trained_first"], e["trained_second"]) == (
        0.2,
        0.3,
        0.4,
        0.7,
    )
    assert e["vanilla_first_ci"] == pytest.approx(list(wilson(20, 100)))
    assert e["diff_first"] == pytest.approx(0.2) and e["diff_second"] == pytest.approx(0.4)
    lo, hi = e["diff_second_ci"]
    assert 0 < lo < 0.4 < hi < 0.6
    g = e["second_given_first_failed"]
    assert g["vanilla"]["acc"] == pytest.approx(10 / 80) and g["trained"]["acc"] == pytest.approx(30 / 60)
    table = effect_table({"T=0.9": e})
    assert "| T=0.9 | 100 | 20.0 [" in table and "+40.0 [" in table


def test_no_difference_has_an_interval_around_zero():
    same = result([(True, None)] * 30 + [(False, True)] * 20 + [(False, False)] * 50)
    e = effect(same, same)
    assert e["diff_first"] == 0 and e["diff_first_ci"] == [0.0, 0.0]


def test_different_problems_are_refused():
    a = result([(True, None)] * 3)
    b = result([(True, None)] * 3)
    b.records[0]["example"] = {"i": 99}
    with pytest.raises(ValueError, match="same examples"):
        effect(a, b)


def test_seeds_bootstrap_carries_both_sources_of_variation():
    from r3fast.stats import paired_bootstrap, seeds_bootstrap

    rng = random.Random(3)
    problems = [float(rng.random() < 0.3) for _ in range(200)]
    same = [problems] * 3  # three identical seeds: only the problems vary
    mean, lo, hi = seeds_bootstrap(same, resamples=2000)
    _, plo, phi = paired_bootstrap([0.0] * 200, problems, resamples=2000)
    assert mean == pytest.approx(sum(problems) / 200)
    assert hi - lo == pytest.approx(phi - plo, rel=0.25)
    spread = [[x + off for x in problems] for off in (-0.2, 0.0, 0.2)]  # seeds that disagree
    _, slo, shi = seeds_bootstrap(spread, resamples=2000)
    assert shi - slo > 1.5 * (hi - lo)
    assert seeds_bootstrap([[0.5] * 10] * 4, resamples=100)[1:] == (0.5, 0.5)
    with pytest.raises(ValueError):
        seeds_bootstrap([[1.0], [1.0, 0.0]])
