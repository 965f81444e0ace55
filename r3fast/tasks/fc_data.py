"""Function-calling datasets: xLAM/APIGen JSON or JSONL, and BFCL JSONL + possible_answer.

Every loader returns examples of one shape (JSON-serialisable dicts):

    {"id": str, "query": str, "tools": [tool schema, ...],
     "answers": [{"name": str, "arguments": {...}}, ...],          # exact values
     "answer_options": [{"name": str, "arguments": {arg: [acceptable values]}}, ...],  # BFCL only
     "system": str}                                                # BFCL only, if the turn has one

- xLAM (Salesforce xlam-function-calling-60k): a JSON list or JSONL of {"id"?, "query", "tools",
  "answers"}; ``tools``/``answers`` may be JSON-encoded strings (as in the released file) and are
  decoded. ``answers`` are exact: the verifier wants every argument, with equal values.
- BFCL (v4, e.g. ``BFCL_v4_simple_python.json``, JSONL despite the suffix): {"id", "question":
  [[messages of the turn]], "function"}, ground truth in ``possible_answer/<same name>``:
  {"id", "ground_truth": [{func_name: {arg: [acceptable values]}}]}. Kept as ``answer_options``
  in BFCL's own shape: per argument a list of acceptable values, ``""`` in it meaning the argument
  may be omitted; a dict value is itself {key: [acceptable values]} (same rules), a list of such
  dicts matches element-wise. ``answers`` then holds one canonical pick (the first non-"" option)
  for display. Only single-turn categories with a possible_answer file are supported.

A malformed record raises ``DatasetError`` naming the file and the 1-based line.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from r3fast.tasks.base import Example

__all__ = [
    "DatasetError",
    "load_examples",
    "load_xlam",
    "load_bfcl",
    "default_bfcl_path",
    "BFCL_DEFAULT",
]

BFCL_DEFAULT = "BFCL_v4_simple_python.json"


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file and the 1-based line."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line, decoded value) for a JSON list file (one per element) or a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(path, None, f"cannot read: {e}") from e
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _array_items(path, text, start + 1)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except (ValueError, RecursionError) as e:
                raise DatasetError(path, lineno, f"invalid JSON: {e}") from e


def _array_items(path: Path, text: str, i: int) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array, each with the line it starts on (raw_decode walk)."""
    decoder = json.JSONDecoder()
    state = "first"  # "first" (after '['), "item" (after ','), "sep" (after an element)
    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        line = text.count("\n", 0, i) + 1
        if i >= len(text):
            raise DatasetError(path, line, "unterminated JSON list")
        if text[i] == "]" and state != "item":
            if text[i + 1 :].strip():
                raise DatasetError(path, line, "text after the JSON list")
            return
        if state == "sep":
            if text[i] != ",":
                raise DatasetError(path, line, "expected ',' or ']' in the JSON list")
            i, state = i + 1, "item"
            continue
        try:
            obj, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError) as e:
            raise DatasetError(path, line, f"invalid JSON: {e}") from e
        yield line, obj
        state = "sep"


def _maybe_decode(path: Path, line: int, record: dict, key: str) -> Any:
    if key not in record:
        raise DatasetError(path, line, f"missing field {key!r}")
    value = record[key]
    if isinstance(value, str):  # xlam-function-calling-60k stores tools/answers as JSON strings
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as e:
            raise DatasetError(path, line, f"field {key!r} is a string but not valid JSON: {e}") from e
    return value


def _check_tools(path: Path, line: int, tools: Any) -> list[dict]:
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        raise DatasetError(path, line, "'tools' must be a list of objects with a string 'name'")
    return tools


def load_xlam(path: str | Path) -> list[Example]:
    """xLAM/APIGen examples from a JSON list or JSONL file."""
    path = Path(path)
    out: list[Example] = []
    for line, rec in _records(path):
        if not isinstance(rec, dict):
            raise DatasetError(path, line, f"expected an object, got {type(rec).__name__}")
        query = rec.get("query")
        if not isinstance(query, str):
            raise DatasetError(path, line, "missing or non-string field 'query'")
        tools = _check_tools(path, line, _maybe_decode(path, line, rec, "tools"))
        answers = _maybe_decode(path, line, rec, "answers")
        if not isinstance(answers, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("arguments"), dict)
            for a in answers
        ):
            raise DatasetError(path, line, "'answers' must be a list of {'name': str, 'arguments': {...}}")
        ex_id = str(rec["id"]) if "id" in rec else f"{path.name}:{line}"
        out.append(
            {
                "id": ex_id,
                "query": query,
                "tools": tools,
                "answers": [{"name": a["name"], "arguments": a["arguments"]} for a in answers],
            }
        )
    return out


def _canonical(options: list) -> tuple[bool, Any]:
    """(present, value): the first non-"" acceptable value, option dicts resolved recursively."""
    picks = [o for o in options if o != ""]
    if not picks:
        return False, None
    return True, _resolve(picks[0])


def _resolve(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, opts in value.items():
            present, v = _canonical(opts) if isinstance(opts, list) else (True, opts)
            if present:
                out[k] = v
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_resolve(v) for v in value]
    return value


def _bfcl_options(path: Path, line: int, truth: Any) -> list[dict]:
    if not isinstance(truth, list):
        raise DatasetError(path, line, "'ground_truth' must be a list of calls (multi-turn is not supported)")
    calls = []
    for call in truth:
        if not isinstance(call, dict) or len(call) != 1:
            raise DatasetError(path, line, "each ground-truth call must be {function_name: {arg: [values]}}")
        ((name, args),) = call.items()
        if not isinstance(args, dict) or not all(isinstance(v, list) for v in args.values()):
            raise DatasetError(path, line, f"arguments of {name!r} must map each name to a list of values")
        calls.append({"name": name, "arguments": args})
    return calls


def load_bfcl(path: str | Path, possible_answer_path: str | Path | None = None) -> list[Example]:
    """BFCL single-turn examples joined with their ground truth by id."""
    path = Path(path)
    answer_path = Path(possible_answer_path or path.parent / "possible_answer" / path.name)
    if not answer_path.exists():
        raise DatasetError(path, None, f"no ground truth at {answer_path}; pass possible_answer_path=")
    truths: dict[str, list[dict]] = {}
    for line, rec in _records(answer_path):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or "ground_truth" not in rec:
            raise DatasetError(answer_path, line, "expected {'id': str, 'ground_truth': [...]}")
        truths[rec["id"]] = _bfcl_options(answer_path, line, rec["ground_truth"])
    out: list[Example] = []
    for line, rec in _records(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            raise DatasetError(path, line, "expected an object with a string 'id'")
        question = rec.get("question")
        if not (
            isinstance(question, list)
            and len(question) == 1
            and isinstance(question[0], list)
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in question[0])
        ):
            raise DatasetError(path, line, "'question' must be one turn: [[{'role', 'content'}, ...]]")
        users = [m["content"] for m in question[0] if m.get("role") == "user"]
        if not users:
            raise DatasetError(path, line, "the turn has no user message")
        if rec["id"] not in truths:
            raise DatasetError(path, line, f"id {rec['id']!r} has no entry in {answer_path}")
        options = truths[rec["id"]]
        ex: Example = {
            "id": rec["id"],
            "query": "\n".join(users),
            "tools": _check_tools(path, line, rec.get("function")),
            "answers": [{"name": c["name"], "arguments": _resolve(c["arguments"])} for c in options],
            "answer_options": options,
        }
        system = [m["content"] for m in question[0] if m.get("role") == "system"]
        if system:
            ex["system"] = "\n".join(system)
        out.append(ex)
    return out


def _sniff(path: Path) -> str:
    for line, rec in _records(path):
        if isinstance(rec, dict) and "question" in rec and "function" in rec:
            return "bfcl"
        if isinstance(rec, dict) and "query" in rec:
            return "xlam"
        raise DatasetError(path, line, "cannot tell the format: expected xLAM 'query' or BFCL 'question'")
    raise DatasetError(path, None, "empty dataset file")


def default_bfcl_path() -> Path:
    """BFCL simple_python from the installed ``bfcl-eval`` package (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")  # importing bfcl_eval would pull heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no function-calling dataset: pass path= (xLAM JSON/JSONL or BFCL JSONL), or install BFCL's "
            "data with `pip install --no-deps bfcl-eval`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / BFCL_DEFAULT
    if not path.exists():
        raise FileNotFoundError(f"bfcl_eval is installed but {path} is missing; pass path=")
    return path


def load_examples(
    path: str | Path | None = None, format: str = "auto", possible_answer_path: str | Path | None = None
) -> list[Example]:
    """Examples from ``path`` (default: BFCL simple_python); ``format`` 'auto' | 'xlam' | 'bfcl'."""
    if format not in ("auto", "xlam", "bfcl"):
        raise ValueError(f"format must be 'auto', 'xlam' or 'bfcl', got {format!r}")
    path = default_bfcl_path() if path is None else Path(path)
    if format == "auto":
        format = _sniff(path)
    if format == "xlam":
        if possible_answer_path is not None:
            raise ValueError("possible_answer_path is only for BFCL files")
        return load_xlam(path)
    return load_bfcl(path, possible_answer_path)
