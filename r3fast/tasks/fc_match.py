"""Function-calling verifier: parse a reply into calls, match them against the ground truth.

Reply format (strict, because the reward must mean "the calls are right and usable as is"):
the whole reply is a JSON list of calls, optionally inside ONE markdown fence (```json or ```),
with surrounding whitespace; any other text -> False. A call is ``{"name": str, "arguments":
{...}}``; ``"parameters"`` is accepted instead of ``"arguments"`` (Llama-style tool calls use it),
never both, and no other keys. Duplicate JSON keys and NaN/Infinity are rejected.

Matching: the calls must equal the ground truth as a multiset (order-free: parallel calls are
matched by a bipartite matching). Values: numbers compare by value (``1 == 1.0``) but a bool is
never a number (``True != 1``); strings exactly; lists element-wise in order; objects key-wise.
Exact answers (xLAM ``answers``) need every argument. Option answers (BFCL ``answer_options``):
each argument's value must be one of its acceptable values; an argument missing from the reply is
fine only if ``""`` is acceptable; an argument absent from the ground truth -> False.
"""

from __future__ import annotations

import json
import re
from typing import Any

from r3fast.tasks.base import Example

__all__ = ["parse_calls", "match_calls", "verify", "MAX_REPLY_CHARS"]

MAX_REPLY_CHARS = 100_000  # a call list is a few hundred characters; bounds json.loads work
_MAX_CALLS = 64
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_calls(completion: Any) -> list[dict[str, Any]] | None:
    """The reply's calls as ``[{"name", "arguments"}]``, or None if it is not exactly that."""
    if not isinstance(completion, str) or len(completion) > MAX_REPLY_CHARS:
        return None
    text = completion.strip()
    if text.startswith("```"):
        m = _FENCE.fullmatch(text)
        if m is None:
            return None
        text = m.group(1).strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        return None
    if not isinstance(value, list) or len(value) > _MAX_CALLS:
        return None
    calls = []
    for call in value:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        keys = set(call) - {"name"}
        if keys not in ({"arguments"}, {"parameters"}):
            return None
        (args,) = (call[k] for k in keys)
        if not isinstance(args, dict):
            return None
        calls.append({"name": call["name"], "arguments": args})
    return calls


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _equal(value: Any, expected: Any) -> bool:
    """Exact equality with the numeric rule: 1 == 1.0, True != 1, recursively."""
    if _is_num(expected):
        return _is_num(value) and value == expected
    if isinstance(expected, (bool, str)) or expected is None:
        return type(value) is type(expected) and value == expected
    if isinstance(expected, list):
        return (
            isinstance(value, list)
            and len(value) == len(expected)
            and all(_equal(v, e) for v, e in zip(value, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(value, dict)
            and value.keys() == expected.keys()
            and all(_equal(value[k], e) for k, e in expected.items())
        )
    return False


def _match_option(value: Any, option: Any) -> bool:
    """One BFCL acceptable value: a dict holds per-key option lists, a list of dicts matches
    element-wise, anything else compares with ``_equal``."""
    if isinstance(option, dict):
        return isinstance(value, dict) and _match_args(value, option)
    if isinstance(option, list) and option and all(isinstance(o, dict) for o in option):
        return (
            isinstance(value, list)
            and len(value) == len(option)
            and all(_match_option(v, o) for v, o in zip(value, option, strict=True))
        )
    return _equal(value, option)


def _match_args(args: dict, options: dict) -> bool:
    """BFCL: every given key is known and takes an acceptable value; omitted keys allow ""."""
    if not set(args) <= set(options):
        return False
    for key, acceptable in options.items():
        if not isinstance(acceptable, list):
            acceptable = [acceptable]  # tolerate a bare value in a hand-written ground truth
        if key not in args:
            if "" not in acceptable:
                return False
        elif not any(_match_option(args[key], o) for o in acceptable):
            return False
    return True


def _perfect_matching(n: int, ok: list[list[bool]]) -> bool:
    """Kuhn's augmenting paths: can every reply call be paired with a distinct truth call?"""
    owner = [-1] * n  # truth index -> reply index

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(n):
            if ok[i][j] and not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, [False] * n) for i in range(n))


def match_calls(calls: list[dict[str, Any]], example: Example) -> bool:
    """True iff ``calls`` equal the example's ground truth as a multiset."""
    if "answer_options" in example:
        truth, same_args = example["answer_options"], _match_args
    else:
        truth, same_args = example["answers"], _equal
    if not isinstance(truth, list) or len(calls) != len(truth):
        return False
    ok = [
        [c["name"] == t["name"] and same_args(c["arguments"], t["arguments"]) for t in truth] for c in calls
    ]
    return _perfect_matching(len(calls), ok)


def verify(example: Example, completion: Any) -> bool:
    """Binary reward: the reply is a JSON call list equal to the ground truth; never raises."""
    try:
        if not isinstance(example, dict):
            return False
        calls = parse_calls(completion)
        return calls is not None and match_calls(calls, example)
    except Exception:  # malformed examples (missing keys, odd types), recursion on deep values
        return False
