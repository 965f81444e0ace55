"""`task.name: dataset`: rows from local files written here, ready verifiers, TRL reward functions."""

from __future__ import annotations

import json
import textwrap

import pytest

from r3fast.errors import UserError
from r3fast.tasks import get_task
from r3fast.tasks.verifiers import build_verifier, last_number, normalise


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa_rows(n=40):
    return [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "id": i} for i in range(n)]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module on sys.path, with a verifier, TRL reward functions and misbehaving ones."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            import time

            def starts_with_answer(example, completion):
                return completion.strip().startswith(str(example["answer"]))

            def accuracy(prompts, completions, answer, **kwargs):
                texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
                return [1.0 if t.strip() == a else 0.0 for t, a in zip(texts, answer)]

            def seen(prompts, completions, **kwargs):
                return [0.75 if isinstance(prompts[0], list) and isinstance(completions[0], list) else 0.25]

            def partial(prompts, completions, **kwargs):
                return [None]

            def hangs(example, completion):
                while True:
                    pass

            def raises(example, completion):
                raise KeyError("boom")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_jsonl_task_prompts_splits_and_numeric_verify(tmp_path, seed):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    task = get_task(
        "dataset", path=str(path), prompt="question", verifier="numeric", system="Answer with a number."
    )
    train, ev = task.dataset(None, seed=seed), task.dataset(None, seed=seed, split="eval")
    assert len(train) + len(ev) == 40 and ev and not {r["id"] for r in train} & {r["id"] for r in ev}
    assert {r["id"] for r in task.dataset(None, seed=seed + 1, split="eval")} == {r["id"] for r in ev}
    ex = train[0]
    assert task.build_prompt(ex) == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": ex["question"]},
    ]
    n = int(ex["answer"])
    assert task.verify(ex, f"The sum is {n}.") and task.verify(ex, f"{n - 1}, no wait: {n}.0")
    assert not task.verify(ex, f"{n + 1}") and not task.verify(ex, "no idea")


def test_chat_messages_prompt_and_system_column(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "Capital of France?"}], "answer": "Paris", "sys": "Be brief."}
    ] * 3
    task = get_task("dataset", path=str(write_jsonl(tmp_path / "c.jsonl", rows)), system_column="sys")
    msgs = task.build_prompt(rows[0])
    assert (
        msgs[0] == {"role": "system", "content": "Be brief."} and msgs[1]["content"] == "Capital of France?"
    )
    assert task.verify(rows[0], "  paris. ") and task.verify(rows[0], "The answer is: Paris")
    assert task.verify(rows[0], r"so \boxed{Paris}") and not task.verify(rows[0], "Lyon")


def test_exact_and_numeric_verifiers():
    ex = {"answer": "New  York"}
    exact = build_verifier("exact", {}, answer="answer")
    assert exact(ex, '"new york".') and not exact(ex, "new york city")
    assert normalise("ＡＢＣ") == "abc"
    num = build_verifier("numeric", {"rel_tol": 0.01}, answer="answer")
    assert num({"answer": 100}, "about 100.5") and not num({"answer": 100}, "102")
    assert num({"answer": "1,234"}, "1234") and not num({"answer": 3}, "nan") and not num({"answer": 3}, "")
    assert last_number("-2.5e3 and then 7") == 7.0 and last_number("none") is None


def test_regex_and_json_verifiers():
    rx = build_verifier("regex", {"pattern": r"^\s*{answer}\b"}, answer="answer")
    assert rx({"answer": "a.b"}, " a.b is it") and not rx({"answer": "a.b"}, "axb")  # answer is escaped
    own = build_verifier("regex", {"full": True, "ignore_case": True}, answer="answer")
    assert own({"answer": r"yes|yeah"}, " YES ") and not own({"answer": r"yes"}, "yes sir")
    js = build_verifier("json", {}, answer="answer")
    ex = {"answer": '{"name": "f", "args": {"a": 1, "b": [1, 2]}}'}
    assert js(ex, 'Call: {"args": {"b": [1, 2], "a": 1.0}, "name": "f"} done')
    assert not js(ex, '{"args": {"b": [2, 1], "a": 1}, "name": "f"}')  # lists keep their order...
    unordered = build_verifier("json", {"unordered_lists": True}, answer="answer")
    assert unordered({"answer": [{"x": 1}, {"y": 2}]}, '[{"y": 2}, {"x": 1}]')  # ...unless asked
    with pytest.raises(UserError, match="does not compile"):
        build_verifier("regex", {"pattern": "("}, answer="answer")
    with pytest.raises(UserError, match="unknown verifier 'fuzzy'"):
        build_verifier("fuzzy", {}, answer="answer")
    with pytest.raises(UserError, match="verifier numeric"):
        build_verifier("numeric", {"tolerance": 1}, answer="answer")


def test_math_verifier():
    pytest.importorskip("math_verify")
    m = build_verifier("math", {}, answer="answer")
    assert m({"answer": r"\frac{1}{2}"}, r"The answer is $\boxed{0.5}$")
    assert m({"answer": "2*x"}, r"$x + x$") and not m({"answer": "3"}, r"$\boxed{4}$")


def test_import_path_verifier_and_trl_rewards(tmp_path, user_module):
    rows = [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": "6"}]
    path = str(write_jsonl(tmp_path / "p.jsonl", rows))
    task = get_task("dataset", path=path, verifier=f"{user_module}:starts_with_answer")
    assert task.verify(rows[0], "4 obviously") and not task.verify(rows[0], "5")
    # a TRL reward function, unchanged: columns as keyword lists, success iff reward >= threshold
    trl = get_task("dataset", path=path, reward=f"{user_module}:accuracy")
    assert trl.verify(rows[0], " 4 ") and not trl.verify(rows[0], "four")
    chat = [{"prompt": [{"role": "user", "content": "hi"}], "answer": "x"}] * 2
    chat_path = str(write_jsonl(tmp_path / "chat.jsonl", chat))
    seen = f"{user_module}:seen"  # 0.75 for conversational prompts and completions, as TRL passes them
    assert get_task("dataset", path=chat_path, reward=seen, reward_threshold=0.5).verify(chat[0], "y")
    assert not get_task("dataset", path=path, reward=seen, reward_threshold=0.5).verify(rows[0], "y")
    assert not get_task("dataset", path=path, reward=f"{user_module}:partial").verify(rows[0], "4")


def test_verifier_that_raises_or_hangs_is_a_counted_failure(tmp_path, user_module):
    path = str(write_jsonl(tmp_path / "p.jsonl", qa_rows(4)))
    ex = qa_rows(4)[0]
    kw = {"path": path, "prompt": "question"}
    assert get_task("dataset", **kw, verifier=f"{user_module}:raises").verify(ex, "0") is False
    task = get_task("dataset", **kw, verifier=f"{user_module}:hangs", verify_timeout=0.2)
    with pytest.warns(UserWarning, match="longer than 0.2 s"):
        assert task.verify(ex, "0") is False
    assert task.counters.counts["verify_timeouts"] == 1


def test_csv_parquet_json_and_save_to_disk(tmp_path, seed):
    datasets = pytest.importorskip("datasets")
    rows = qa_rows(30)
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(tmp_path / "qa.csv")
    ds.to_parquet(tmp_path / "qa.parquet")
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    for name in ("qa.csv", "qa.parquet", "qa.json"):
        task = get_task("dataset", path=str(tmp_path / name), prompt="question", verifier="numeric")
        got = task.dataset(None, seed=seed) + task.dataset(None, seed=seed, split="eval")
        assert sorted(r["id"] for r in got) == list(range(30)), name
        assert task.verify(got[0], str(2 * got[0]["id"]))
    # a DatasetDict keeps its own splits (test -> eval)
    datasets.DatasetDict({"train": ds.select(range(20)), "test": ds.select(range(20, 30))}).save_to_disk(
        tmp_path / "dd"
    )
    task = get_task("dataset", path=str(tmp_path / "dd"), prompt="question")
    assert {r["id"] for r in task.dataset(None, split="eval")} == set(range(20, 30))
    assert len(task.dataset(5, seed=seed)) == 5
    # a separate eval file
    write_jsonl(tmp_path / "ev.jsonl", qa_rows(3))
    task = get_task(
        "dataset", path=str(tmp_path / "qa.json"), eval_path=str(tmp_path / "ev.jsonl"), prompt="question"
    )
    assert len(task.dataset(None, split="eval")) == 3 and len(task.dataset(None)) == 30


@pytest.mark.parametrize(
    "options, message",
    [
        ({"path": "nope.jsonl"}, "no such file"),
        ({"path": "{d}/qa.txt"}, "unknown format '.txt'"),
        ({"path": "{d}/qa.jsonl"}, "row 0 has no column 'prompt'"),
        ({"path": "{d}/qa.jsonl", "prompt": "question", "answer": "solution"}, "no column 'solution'"),
        ({"path": "{d}/qa.jsonl", "prompt": "id"}, "must be a string or a list of {role, content}"),
        ({"path": "{d}/bad.jsonl"}, "bad.jsonl:2: not valid JSON"),
        (
            {"path": "{d}/qa.jsonl", "prompt": "question", "verifier": "nope_mod:f"},
            "module 'nope_mod' not found",
        ),
        (
            {"path": "{d}/qa.jsonl", "prompt": "question", "reward": "json:nope"},
            "json has no attribute 'nope'",
        ),
        ({"path": "{d}/qa.jsonl", "prompt": "question", "eval_fraction": 1.5}, "eval_fraction"),
        ({"path": "{d}/qa.jsonl", "bogus": 1}, "unexpected keyword argument 'bogus'"),
    ],
)
def test_one_line_errors(tmp_path, options, message):
    from r3fast.validate import build_task

    write_jsonl(tmp_path / "qa.jsonl", qa_rows(3))
    (tmp_path / "qa.txt").write_text("x")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    options = {k: v.format(d=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(UserError, match=message) as e:
        build_task("dataset", options)
    assert "\n" not in str(e.value)
