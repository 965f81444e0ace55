"""Countdown: verifier hand cases, pathological inputs, fuzzing, generator, registry."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3fast.tasks import Task, available_tasks, get_task, make_task, register_task
from r3fast.tasks import countdown as cd

EX = {"numbers": [1, 2, 3], "target": 9}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    "completion",
    [
        "(1 + 2) * 3 = 9",
        "(1+2)*3",
        "3 * (2 + 1)",
        "9 = (1 + 2) * 3",
        "(1 + 2) × 3 = 9",
        "(1 + 2) x 3 = 9",
        "**Answer:** (1 + 2) * 3 = 9.",
        "Sure!\n(1 + 2) * 3 = 9\nI used 3 numbers.",  # trailing prose without an operator
        "\\( (1 + 2) \\times 3 = 9 \\)",
        "\\[ \\left(1 + 2\\right) \\cdot 3 = 9 \\]",
        "Syntax: 3 * (1 + 2) = 9",
        "1 + 2 = 3, then 3 * 3 = 9.\n(1 + 2) * 3 = 9",  # only the last equation counts
    ],
)
def test_right_equations(completion):
    assert cd.verify(EX, completion)


@pytest.mark.parametrize(
    "completion",
    [
        "(1 + 2) * 3 = 10",  # rhs is not the target
        "(1 + 2) * 3 = 9 = 9",
        "(1 + 2) * 3 = 3 * 3",  # rhs must be a number
        "3 * 3 = 9",  # missing number, reused number
        "(1 + 2) * 3 * 1 = 9",  # extra number
        "(1 + 2) * 3 + 0 = 9",
        "1 + 2 + 3 = 9",  # wrong value
        "(1 + 2) * 3 = 9\n1 + 2 = 3",  # the last equation is the answer
        "-(1 + 2) * -3 = 9",  # unary minus
        "(1 + 2) ** 3 = 9",
        "(1 + 2) // 3 * 9 = 9",
        "(1.0 + 2) * 3 = 9",
        "(01 + 2) * 3 = 9",
        "(1 + 2)(3) = 9",
        "(1 + 2) * 3 = 9.5",
        "(１ + 2) * 3 = 9",  # fullwidth digit
        "(٣ + 2) * 1 = 9",  # Arabic-Indic digit
        "__import__('os').system('true')",
        "((1 + 2) * 3 = 9",
        "",
        "The answer is 9.",
    ],
)
def test_wrong_equations(completion):
    assert not cd.verify(EX, completion)


def test_fractions_and_division():
    assert cd.verify({"numbers": [3, 3, 8, 8], "target": 24}, "8 / (3 - 8 / 3) = 24")  # 8/3 intermediate
    assert not cd.verify({"numbers": [5, 5, 1], "target": 1}, "1 / (5 - 5) = 1")  # division by zero
    assert cd.verify({"numbers": [7, 2], "target": 14}, "7 ÷ 2 * 2 * 2 = 14") is False  # extra 2


def test_ops_restriction():
    plus_only = get_task("countdown", num_numbers=2, number_range=(1, 10), target_range=(2, 20), ops="+")
    assert plus_only.verify({"numbers": [4, 5], "target": 9}, "4 + 5 = 9")
    assert not plus_only.verify({"numbers": [3, 3], "target": 9}, "3 * 3 = 9")
    assert "+ and parentheses" in plus_only.build_prompt({"numbers": [4, 5], "target": 9})[0]["content"]


@pytest.mark.parametrize(
    "example",
    [
        None,
        {},
        {"numbers": [1, 2, 3]},
        {"target": 9},
        {"numbers": "123", "target": 9},
        {"numbers": [1, 2, 3], "target": "9"},
        {"numbers": [1, 2, True], "target": 3},
        {"numbers": [1.0, 2, 3], "target": 9},
        {"numbers": [], "target": 0},
        [1, 2, 3],
    ],
)
def test_bad_examples_are_false(example):
    assert cd.verify(example, "(1 + 2) * 3 = 9") is False


@pytest.mark.parametrize("completion", [None, b"(1 + 2) * 3 = 9", 9, ["(1 + 2) * 3 = 9"]])
def test_non_strings_are_false(completion):
    assert cd.verify(EX, completion) is False


PATHOLOGICAL = {
    "1e6 chars": "1 + " * 250_000 + "1",
    "1e6 chars of prose": "x" * 1_000_000,
    "1e5 nested parens": "(" * 100_000 + "1 + 2" + ")" * 100_000 + " * 3 = 9",
    "1e5 nested, short tail": "(" * 100_000 + "1",
    "1e5-digit literal": "1" * 100_000 + " + 2 * 3 = 9",
    "1e5-digit rhs": "(1 + 2) * 3 = " + "9" * 100_000,
    "huge power": "9 ** 9 ** 9 ** 9",
    "long operator chain": "1" + " * 1" * 10_000,
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_inputs_are_false_without_unbounded_work(name, monkeypatch):
    # the guard's job: no parse of unbounded input (checked on what reaches ast.parse, not on a clock)
    parsed = []
    real = cd.ast.parse
    monkeypatch.setattr(cd.ast, "parse", lambda src, *a, **k: parsed.append(len(src)) or real(src, *a, **k))
    assert cd.verify(EX, PATHOLOGICAL[name]) is False
    assert all(n <= cd._MAX_EXPR_CHARS for n in parsed), parsed


def test_long_reply_ending_in_the_answer_still_counts():
    assert cd.verify(EX, "blah " * 200_000 + "\n(1 + 2) * 3 = 9")
    assert cd.verify(EX, "blah " * 200_000 + "(1 + 2) * 3 = 9")
    assert not cd.verify(EX, "1" * 5000 + " * 3 = 9")  # the cut run is not an answer


@FUZZ
@given(st.text())
def test_fuzz_text_never_raises(text):
    assert cd.verify(EX, text) in (True, False)


_expr_chars = st.sampled_from(list("0123456789()+-*/=x ×÷.３\n") + ["1", "2", "3", "9"])


@FUZZ
@given(st.lists(_expr_chars, max_size=40).map("".join))
def test_fuzz_near_misses_never_raise(text):
    assert cd.verify(EX, text) in (True, False)


@FUZZ
@given(
    st.lists(st.integers(1, 20), min_size=2, max_size=3),
    st.permutations(["+", "-", "*", "/"]),
    st.integers(-3, 3),
)
def test_fuzz_structured_expressions(numbers, ops, delta):
    # A correct expression is accepted; the same with a wrong rhs or one number changed is not.
    expr = f"({numbers[0]} {ops[0]} {numbers[1]})"
    for v, op in zip(numbers[2:], ops[1:], strict=False):
        expr = f"{expr} {op} {v}"
    try:
        value = cd._evaluate(expr, numbers, "+-*/")
    except ZeroDivisionError:  # pragma: no cover - _evaluate catches it
        pytest.fail("raised")
    if value is None or value.denominator != 1:
        return
    ex = {"numbers": numbers, "target": int(value)}
    assert cd.verify(ex, f"{expr} = {int(value)}")
    assert cd.verify(ex, f"{expr} = {int(value) + delta}") == (delta == 0)
    assert not cd.verify({"numbers": [*numbers[:-1], numbers[-1] + 1], "target": int(value)}, expr)


# ---------------------------------------------------------------- solver and generator


def test_solver():
    assert cd.solve([3, 3, 8, 8], 24) is not None
    assert cd.verify({"numbers": [3, 3, 8, 8], "target": 24}, cd.solve([3, 3, 8, 8], 24))
    assert cd.solve([1, 1], 5) is None
    assert cd.solve([2, 3], 6, ops="+") is None


SMALL = dict(num_numbers=2, number_range=(1, 10), target_range=(1, 100))  # ~200 distinct tasks
PAPER = dict(num_numbers=(3, 4), number_range=(1, 100), target_range=(1, 999))  # the task's defaults


@pytest.mark.parametrize(
    "knobs", [SMALL, PAPER, dict(num_numbers=3, number_range=(20, 30), target_range=(30, 70), ops="+-")]
)
def test_generated_tasks_are_solvable_and_respect_knobs(knobs):
    knobs = dict(knobs)
    ops = knobs.pop("ops", "+-*/")
    examples = cd.generate(60, seed=3, ops=ops, **knobs)
    k = knobs["num_numbers"]
    k_lo, k_hi = (k, k) if isinstance(k, int) else k
    for ex in examples:
        assert k_lo <= len(ex["numbers"]) <= k_hi
        assert all(knobs["number_range"][0] <= v <= knobs["number_range"][1] for v in ex["numbers"])
        assert knobs["target_range"][0] <= ex["target"] <= knobs["target_range"][1]
        solution = cd.solve(ex["numbers"], ex["target"], ops)
        assert solution is not None, ex
        assert cd.verify(ex, f"{solution} = {ex['target']}", ops)
        assert json.loads(json.dumps(ex)) == ex


def test_generator_is_seeded():
    assert cd.generate(20, seed=1) == cd.generate(20, seed=1)
    assert cd.generate(20, seed=1) != cd.generate(20, seed=2)


def test_impossible_knobs_raise():
    with pytest.raises(ValueError, match="no solvable"):
        cd.generate(1, num_numbers=2, number_range=(1, 2), target_range=(100, 200))
    with pytest.raises(ValueError, match="num_numbers"):
        cd.generate(1, num_numbers=1)
    with pytest.raises(ValueError, match="ops"):
        cd.generate(1, ops="+^")


@pytest.mark.parametrize("knobs", [SMALL, PAPER])
def test_dataset_splits(knobs):
    task = get_task("countdown", **knobs)
    train, evals = task.dataset(300, seed=0), task.dataset(100, seed=0, split="eval")
    assert len(train) == 300 and len(evals) == 100
    assert not {cd._key(e) for e in train} & {cd._key(e) for e in evals}
    assert not {cd._key(e) for e in task.dataset(300, seed=1)} & {cd._key(e) for e in evals}
    assert task.dataset(50, seed=0) == train[:50]  # a prefix: growing n keeps the earlier tasks
    assert task.dataset(50, seed=1) != train[:50]
    with pytest.raises(ValueError):
        task.dataset(5, split="test")


def test_prompt_text():
    (msg,) = get_task("countdown").build_prompt({"numbers": [3, 7, 25], "target": 46})
    assert msg["role"] == "user"
    assert msg["content"] == (
        "Write an equation with the numbers 3, 7 and 25 that equals 46. "
        "Allowed operations: + - * / and parentheses. Use each number exactly once. "
        "Reply with only the equation, ending with = 46"
    )


# ---------------------------------------------------------------- registry and custom tasks


def test_registry():
    assert {"countdown", "function_calling"} <= set(available_tasks())
    task = get_task("countdown", **SMALL)
    assert isinstance(task, Task) and task.name == "countdown"
    with pytest.raises(ValueError, match="countdown"):
        get_task("nope")


def test_make_task_and_register():
    def build(ex):
        return [{"role": "user", "content": f"Say {ex['word']}"}]

    def check(ex, text):
        return text.strip() == ex["word"]  # raises on None: the wrapper must turn that into False

    examples = [{"word": f"w{i}"} for i in range(100)]
    task = make_task("echo", build_prompt=build, verify=check, examples=examples)
    assert isinstance(task, Task) and task.name == "echo"
    assert task.verify({"word": "hi"}, " hi ") and task.verify({"word": "hi"}, None) is False
    assert task.verify({}, "hi") is False
    train, evals = task.dataset(None), task.dataset(None, split="eval")
    assert len(train) + len(evals) == 100 and not {e["word"] for e in train} & {e["word"] for e in evals}
    assert task.dataset(10, seed=5) == task.dataset(10, seed=5)
    register_task("echo_test", lambda **kw: make_task("echo_test", build, check, examples, **kw))
    assert get_task("echo_test").verify({"word": "a"}, "a")
    with pytest.raises(ValueError, match="already registered"):
        register_task("echo_test", lambda: task)
    with pytest.raises(ValueError):
        make_task("bad", build, check)  # neither examples nor dataset
