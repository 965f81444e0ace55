"""Function calling: loaders (xLAM JSON/JSONL, BFCL), verifier rules, fuzzing, task API."""

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3fast.tasks import Task, get_task
from r3fast.tasks.fc_data import DatasetError, load_bfcl, load_examples, load_xlam
from r3fast.tasks.fc_match import parse_calls, verify

FIX = Path(__file__).parent / "fixtures" / "function_calling"
BFCL = FIX / "bfcl"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def by_id(examples):
    return {ex["id"]: ex for ex in examples}


XLAM = by_id(load_xlam(FIX / "xlam_sample.json"))
SIMPLE = by_id(load_bfcl(BFCL / "BFCL_v4_simple_python.json"))
PARALLEL = by_id(load_bfcl(BFCL / "BFCL_v4_parallel.json"))


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def reply(*calls):
    return json.dumps(list(calls))


# ---------------------------------------------------------------- loaders


def test_xlam_json_with_string_fields_and_jsonl_agree():
    jsonl = load_xlam(FIX / "xlam_sample.jsonl")
    assert [e["query"] for e in jsonl] == [e["query"] for e in XLAM.values()]
    assert [e["answers"] for e in jsonl] == [e["answers"] for e in XLAM.values()]
    assert [e["tools"] for e in jsonl] == [e["tools"] for e in XLAM.values()]
    assert isinstance(XLAM["1"]["tools"], list) and XLAM["1"]["tools"][0]["name"] == "get_weather"
    assert jsonl[0]["id"] == "xlam_sample.jsonl:1"  # no id field: file and line
    for ex in [*jsonl, *XLAM.values(), *SIMPLE.values()]:
        assert json.loads(json.dumps(ex)) == ex
        assert verify(ex, json.dumps(ex["answers"]))


def test_auto_format():
    assert load_examples(FIX / "xlam_sample.json") == list(XLAM.values())
    assert load_examples(BFCL / "BFCL_v4_parallel.json") == list(PARALLEL.values())
    with pytest.raises(ValueError, match="format"):
        load_examples(FIX / "xlam_sample.json", format="csv")


def test_bfcl_loader():
    ex = SIMPLE["simple_python_0"]
    assert ex["query"].startswith("Find the area of a triangle")
    assert ex["tools"][0]["name"] == "calculate_triangle_area"
    assert ex["answer_options"] == [
        {"name": "calculate_triangle_area", "arguments": {"base": [10], "height": [5], "unit": ["units", ""]}}
    ]
    assert ex["answers"] == [call("calculate_triangle_area", base=10, height=5, unit="units")]
    assert len(PARALLEL["parallel_0"]["answer_options"]) == 2


@pytest.mark.parametrize(
    ("name", "text", "line", "match"),
    [
        (
            "bad.jsonl",
            '{"query": "q", "tools": [], "answers": []}\n\n{"query": "q", "tools": [}\n',
            3,
            "invalid JSON",
        ),
        ("bad.jsonl", '{"query": "q", "tools": []}\n', 1, "answers"),
        ("bad.jsonl", '{"query": "q", "tools": "[oops", "answers": []}\n', 1, "tools"),
        ("bad.jsonl", '{"query": "q", "tools": [], "answers": [{"name": "f"}]}\n', 1, "answers"),
        ("bad.json", '[\n  {"query": "q", "tools": [], "answers": []},\n  {"query": 5}\n]\n', 3, "query"),
        ("bad.json", '[\n  {"query": "q", "tools": [], "answers": []}\n  {"query": "q"}\n]\n', 3, "','"),
        ("bad.json", '[\n  {"query": "q", "tools": [], "answers": []},\n', 3, "unterminated"),
    ],
)
def test_xlam_bad_line_names_file_and_line(tmp_path, name, text, line, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetError, match=match) as err:
        load_xlam(path)
    assert err.value.line == line and f"{path}:{line}:" in str(err.value)


def test_bfcl_bad_files(tmp_path):
    (tmp_path / "possible_answer").mkdir()
    q = (BFCL / "BFCL_v4_simple_python.json").read_text().splitlines()
    a = (BFCL / "possible_answer" / "BFCL_v4_simple_python.json").read_text().splitlines()
    (tmp_path / "t.json").write_text("\n".join(q[:3]) + "\n")
    (tmp_path / "possible_answer" / "t.json").write_text("\n".join([a[0], a[2]]) + "\n")
    with pytest.raises(DatasetError, match=r"t\.json:2: .*simple_python_1") as err:
        load_bfcl(tmp_path / "t.json")  # question on line 2 has no ground truth
    assert err.value.line == 2
    (tmp_path / "possible_answer" / "t.json").write_text(a[0] + '\n{"id": "x", "ground_truth": {"f": 1}}\n')
    with pytest.raises(DatasetError, match=r"possible_answer/t\.json:2"):
        load_bfcl(tmp_path / "t.json")
    with pytest.raises(DatasetError, match="possible_answer_path"):
        load_bfcl(BFCL / "BFCL_v4_simple_python.json", possible_answer_path=tmp_path / "missing.json")


# ---------------------------------------------------------------- verifier


def test_bfcl_empty_string_means_optional():
    ex = SIMPLE["simple_python_0"]
    assert verify(ex, reply(call("calculate_triangle_area", base=10, height=5)))  # unit omitted
    assert verify(ex, reply(call("calculate_triangle_area", base=10, height=5, unit="units")))
    assert not verify(ex, reply(call("calculate_triangle_area", base=10, height=5, unit="cm")))
    assert not verify(ex, reply(call("calculate_triangle_area", base=10)))  # required height
    assert not verify(ex, reply(call("calculate_triangle_area", base=10, height=5, color="red")))
    hypot = SIMPLE["simple_python_2"]  # z: ["", 0]
    assert verify(hypot, reply(call("math.hypot", x=4, y=5)))
    assert verify(hypot, reply(call("math.hypot", x=4, y=5, z=0)))
    assert not verify(hypot, reply(call("math.hypot", x=4, y=5, z=1)))


def test_bfcl_nested_dict_options():
    ex = SIMPLE["simple_python_260"]
    args = {
        "area": {"width": 20, "height": 12},
        "paint_coverage": 350,
        "exclusion": {"type": "window", "area": 15},
    }
    assert verify(ex, reply(call("paint_requirement.calculate", **args)))
    args["exclusion"] = {"type": "window", "area": 15, "extra": 1}
    assert not verify(ex, reply(call("paint_requirement.calculate", **args)))


def test_numbers_bools_and_strings():
    ex = SIMPLE["simple_python_1"]  # number: [5]
    assert verify(ex, reply(call("math.factorial", number=5.0)))  # 5 == 5.0
    assert not verify(ex, reply(call("math.factorial", number="5")))
    tip = XLAM["3"]  # bill 42.5, percent 15, split False
    assert verify(tip, reply(call("calculate_tip", bill=42.5, percent=15.0, split=False)))
    assert not verify(tip, reply(call("calculate_tip", bill=42.5, percent=15, split=0)))  # False != 0
    assert not verify(tip, reply(call("calculate_tip", bill=42.5, percent=15)))  # xLAM: all args
    weather = XLAM["1"]
    assert not verify(weather, reply(call("get_weather", city="paris", unit="celsius")))  # exact strings
    stats = XLAM["4"]  # values [1, 2.5, 4], options {"ddof": 1}
    assert verify(stats, reply(call("summary_stats", values=[1.0, 2.5, 4], options={"ddof": 1.0})))
    assert not verify(stats, reply(call("summary_stats", values=[2.5, 1, 4], options={"ddof": 1})))
    assert not verify(stats, reply(call("summary_stats", values=[1, 2.5, 4], options={"ddof": True})))


def test_parallel_calls_are_order_free():
    for ex in (XLAM["2"], PARALLEL["parallel_0"], PARALLEL["parallel_2"]):
        answers = ex["answers"]
        assert verify(ex, json.dumps(answers)) and verify(ex, json.dumps(answers[::-1]))
        assert not verify(ex, json.dumps(answers[:1]))
        assert not verify(ex, json.dumps(answers + answers[:1]))
        assert not verify(ex, json.dumps([answers[0], answers[0]]))  # a multiset, not a set
    fx = XLAM["2"]
    swapped = [
        call("convert_currency", amount=10, source="USD", target="JPY"),
        call("convert_currency", amount=5, source="GBP", target="EUR"),
    ]
    assert not verify(fx, json.dumps(swapped))


@pytest.mark.parametrize(
    ("wrap", "ok"),
    [
        ("{}", True),
        ("  \n{}\n\n", True),
        ("```json\n{}\n```", True),
        ("```\n{}\n```", True),
        ("\n```json\n{}\n```\n", True),
        ("Here are the calls: {}", False),
        ("{}\nHope this helps!", False),
        ("```json\n{}\n```\nDone.", False),
        ("```json\n{}\n```\n```json\n{}\n```", False),
        ("```python\n{}\n```", False),
    ],
)
def test_code_fence_allowed_chatter_rejected(wrap, ok):
    ex = XLAM["1"]
    assert verify(ex, wrap.replace("{}", json.dumps(ex["answers"]))) is ok


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',  # not a list
        '[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}]',
        '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "id": 1}]',
        '[{"name": "get_weather", "arguments": {}, "parameters": {"city": "Paris", "unit": "celsius"}}]',
        '[{"name": "get_weather", "arguments": {"city": "Paris", "city": "Paris", "unit": "celsius"}}]',
        '[{"function": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
        "[get_weather(city='Paris', unit='celsius')]",
        "[]",
        "",
    ],
)
def test_malformed_replies(text):
    assert not verify(XLAM["1"], text)


def test_parameters_alias():
    assert verify(XLAM["1"], '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}]')
    assert parse_calls('[{"name": "f", "parameters": {}}]') == [{"name": "f", "arguments": {}}]


@pytest.mark.parametrize(
    "example",
    [
        None,
        {},
        {"answers": "x"},
        {"answers": [{"name": "get_weather"}]},
        {"answer_options": None},
        {"answers": [1]},
        [1, 2],
    ],
)
def test_bad_examples_are_false(example):
    assert verify(example, json.dumps(XLAM["1"]["answers"])) is False


@pytest.mark.parametrize("completion", [None, b"[]", 3, ["[]"]])
def test_non_strings_are_false(completion):
    assert verify(XLAM["1"], completion) is False


PATHOLOGICAL = {
    "1e6 chars": "[" + " " * 1_000_000 + "]",
    "1e5 nested lists": "[" * 100_000 + "]" * 100_000,
    "5e4 nested objects": '[{"name": "f", "arguments": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001 + "}]",
    "huge int": '[{"name": "f", "arguments": {"a": ' + "9" * 90_000 + "}}]",
    "NaN": '[{"name": "get_weather", "arguments": {"city": NaN, "unit": "celsius"}}]',
    "1e5 calls": "[" + ",".join(['{"name": "f", "arguments": {}}'] * 3000) + "]",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_inputs_are_false_without_unbounded_work(name, monkeypatch):
    # the guard's job: bounded work on any input (checked on what reaches json.loads, not on a clock)
    import r3fast.tasks.fc_match as fc

    parsed = []
    real_loads = fc.json.loads
    monkeypatch.setattr(fc.json, "loads", lambda s, *a, **k: parsed.append(len(s)) or real_loads(s, *a, **k))
    assert verify(XLAM["1"], PATHOLOGICAL[name]) is False
    assert all(n <= fc.MAX_REPLY_CHARS for n in parsed), parsed


@FUZZ
@given(st.text())
def test_fuzz_text_never_raises(text):
    assert verify(SIMPLE["simple_python_0"], text) in (True, False)


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
_json = st.recursive(
    _scalars | st.floats(allow_nan=False, allow_infinity=False),  # NaN/Infinity are not JSON
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)


_MISSING = object()
_near = {  # per argument of simple_python_0: the right values and near misses
    "base": [10, 10.0, 11, True, "10", [10], _MISSING],
    "height": [5, 5.0, -5, False, None, _MISSING],
    "unit": ["units", "", "Units", "cm", _MISSING],
    "color": [_MISSING, _MISSING, "red"],
}


@FUZZ
@given(
    st.fixed_dictionaries({k: st.sampled_from(v) for k, v in _near.items()}),
    st.sampled_from(["calculate_triangle_area", "calculate_triangle_area", "area"]),
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
)
def test_fuzz_structured_near_misses(picks, name, copies, fence, alias):
    # Near misses of the truth: never raises, and True exactly when BFCL's rules say so.
    args = {k: v for k, v in picks.items() if v is not _MISSING}
    calls = [{"name": name, "parameters" if alias else "arguments": args}] * copies
    text = json.dumps(calls)
    if fence:
        text = f"```json\n{text}\n```"
    expected = (
        copies == 1
        and name == "calculate_triangle_area"
        and "color" not in args
        and type(args.get("base")) in (int, float)
        and args["base"] == 10
        and type(args.get("height")) in (int, float)
        and args["height"] == 5
        and args.get("unit", "units") in ("units", "")  # "" is acceptable as a value too
    )
    assert verify(SIMPLE["simple_python_0"], text) is expected


@FUZZ
@given(_json, _json)
def test_fuzz_exact_values(value, other):
    ex = {"answers": [call("f", v=value)]}
    assert verify(ex, reply(call("f", v=value)))
    assert verify(ex, reply(call("f", v=other))) in (True, False)


# ---------------------------------------------------------------- task API


def test_task_api_on_fixtures():
    task = get_task("function_calling", path=BFCL / "BFCL_v4_simple_python.json")
    assert isinstance(task, Task) and task.name == "function_calling"
    system, user = task.build_prompt(SIMPLE["simple_python_0"])
    assert system["role"] == "system"
    assert user == {"role": "user", "content": SIMPLE["simple_python_0"]["query"]}
    assert '"calculate_triangle_area"' in system["content"]
    assert system["content"].endswith(
        'Reply with only a JSON list of calls: [{"name": "tool_name", "arguments": {...}}]'
    )
    train, evals = task.dataset(None), task.dataset(None, split="eval")
    assert len(train) + len(evals) == 6 and not {e["id"] for e in train} & {e["id"] for e in evals}
    assert task.dataset(3, seed=1) == task.dataset(3, seed=1)
    assert len(task.dataset(3)) == min(3, len(train))


def test_default_dataset_is_bfcl_simple_python():
    if importlib.util.find_spec("bfcl_eval") is None:  # not imported: it pulls heavy dependencies
        pytest.skip("bfcl-eval not installed")
    task = get_task("function_calling")
    train, evals = task.dataset(None), task.dataset(None, split="eval")
    assert len(train) + len(evals) == 400 and 0.1 < len(evals) / 400 < 0.3
    assert not {e["id"] for e in train} & {e["id"] for e in evals}
    assert all(task.verify(e, json.dumps(e["answers"])) for e in train[:50])


def test_missing_default_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps bfcl-eval"):
        get_task("function_calling")
