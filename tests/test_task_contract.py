"""Issue 23: a user's verifier cannot lie or hang, a user's prompt builder is checked, and a
failure set's examples must fit the task."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from r3fast.errors import UserError
from r3fast.tasks import get_task, make_task
from r3fast.tasks.base import example_problem, verify_counts
from r3fast.validate import check_prompt

EXAMPLES = [{"w": f"topic {i}"} for i in range(20)]


def task_with(verify=lambda ex, text: True, build=lambda ex: [{"role": "user", "content": ex["w"]}], **kw):
    return make_task("user", build_prompt=build, verify=verify, examples=EXAMPLES, **kw)


@pytest.mark.parametrize("result", ["False", "True", float("nan"), None, 2, [True], 0.0])
def test_a_verify_result_that_is_not_a_bool_is_a_counted_failure(result):
    task = task_with(lambda ex, text: result)
    with pytest.warns(UserWarning, match="not a bool; scored as a failure \\(counted as verify_invalid\\)"):
        assert task.verify(EXAMPLES[0], "x") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, counted every time
        assert task.verify(EXAMPLES[0], "x") is False
    assert verify_counts(task) == {"verify_invalid": 2, "verify_timeouts": 0}


@pytest.mark.parametrize(
    "result,ok", [(True, True), (False, False), (1, True), (0, False), (np.bool_(1), True)]
)
def test_bools_and_0_1_are_taken_as_they_are(result, ok):
    task = task_with(lambda ex, text: result)
    assert task.verify(EXAMPLES[0], "x") is ok and verify_counts(task)["verify_invalid"] == 0


def _spin(ex, text):
    while True:
        pass


def test_a_hanging_verify_times_out_in_the_main_thread_and_in_others():
    task = task_with(_spin, verify_timeout=0.2)
    with pytest.warns(UserWarning, match="verify took longer than 0.2 s"):
        assert task.verify(EXAMPLES[0], "x") is False  # SIGALRM stops the busy loop itself
    stuck = threading.Event()
    task = task_with(lambda ex, text: stuck.wait(600), verify_timeout=0.2)
    with ThreadPoolExecutor(1) as pool, pytest.warns(UserWarning, match="longer than"):
        assert pool.submit(task.verify, EXAMPLES[0], "x").result() is False  # a watchdog, off the main thread
    stuck.set()
    assert verify_counts(task)["verify_timeouts"] == 1


@pytest.mark.parametrize(
    "build,why",
    [
        (lambda ex: "just a string", "returned str"),
        (lambda ex: None, "returned NoneType"),
        (lambda ex: [], "returned list"),
        (lambda ex: [{"role": "user"}], "message 0 has no 'content' string"),
        (lambda ex: [{"content": "hi"}], "message 0 is"),
        (lambda ex: [{"role": "user", "content": ex["missing"]}], "raised KeyError"),
    ],
)
def test_a_bad_build_prompt_is_one_line_naming_the_example_before_any_model(build, why):
    task = task_with(build=build)
    with pytest.raises(UserError, match="build_prompt") as e:
        check_prompt(task, seed=0)
    msg = str(e.value)
    assert why in msg and '{"w": "topic' in msg and "\n" not in msg, msg
    assert why in example_problem(task, EXAMPLES[0])


def test_countdown_examples_are_checked_against_the_task():
    task = get_task("countdown")
    assert example_problem(task, {"numbers": [3, 4], "target": 7}) is None
    bads = ({"w": "x"}, {"numbers": [], "target": 3}, {"numbers": [1, "2"], "target": 3}, {"numbers": [1]})
    for bad in bads:
        assert example_problem(task, bad), bad
