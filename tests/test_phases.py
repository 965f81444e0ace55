"""The per-phase clock (r3fast.phases): time and tokens billed to the outermost open phase, every
phase present in what the loop takes (0 when it did not run), a fresh start after each take."""

from __future__ import annotations

import time

import pytest

from r3fast.metric_schema import METRICS, PHASES
from r3fast.phases import phase, take_phases


def test_outer_phase_owns_nested_work_and_take_starts_afresh():
    take_phases()
    t0 = time.perf_counter()
    with phase("eval") as p:
        with phase("reflect") as q:  # a periodic evaluation's reflections are evaluation time
            q.tokens += 5
        p.tokens += 3
    with phase("retry") as r:
        r.tokens += 7
    wall = time.perf_counter() - t0
    got = take_phases()
    assert set(got) == {f"phase_{n}_{k}" for n in PHASES for k in ("s", "tokens")} <= set(METRICS)
    assert got["phase_eval_tokens"] == 3 and got["phase_reflect_tokens"] == 0 and got["phase_reflect_s"] == 0
    assert got["phase_retry_tokens"] == 7
    assert 0 < got["phase_eval_s"] and 0 < got["phase_retry_s"]
    assert got["phase_eval_s"] + got["phase_retry_s"] <= wall  # disjoint intervals inside the block
    assert not any(take_phases().values())  # the next take starts from zero


def test_unknown_phase_and_take_inside_a_phase_are_refused():
    with pytest.raises(KeyError, match="unknown phase 'rollout'"):
        with phase("rollout"):
            pass
    with phase("sync"):
        with pytest.raises(RuntimeError, match="inside phase 'sync'"):
            take_phases()
    take_phases()


def test_a_failing_block_still_closes_its_phase():
    take_phases()
    with pytest.raises(ValueError):
        with phase("verify") as p:
            p.tokens += 2
            raise ValueError("boom")
    assert take_phases()["phase_verify_tokens"] == 2  # billed, and no phase left open
