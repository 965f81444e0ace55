"""Ready verifiers for a dataset task, chosen by name, and TRL-style reward functions as verifiers.

Each builder returns `verify(example, completion) -> bool`, reading the reference answer from the
example's answer column. The dataset task wraps them (r3fast.tasks.checked) so that none can raise,
return a non-bool or hang the run; model output is only ever parsed, never evaluated.

- exact:   normalised text equality (NFKC, case, whitespace, surrounding quotes and final period)
           of the answer with the whole completion, the text after its last "answer:"/"answer is",
           or its last \\boxed{...}
- numeric: the last number in the completion against the answer, `math.isclose(rel_tol, abs_tol)`
- regex:   `re.search` of `pattern` (`{answer}` in it is the escaped answer; no pattern: the
           answer column holds the regex); `full: true` for a whole-completion match
- json:    the first JSON value in the completion equals the answer (object keys in any order;
           lists in order unless `unordered_lists: true`)
- math:    math-verify (`pip install 'r3fast[math]'`): symbolic equality of LaTeX / expressions
- `pkg.module:fn`: any `fn(example, completion) -> bool`
A TRL reward function `f(prompts, completions, **columns) -> list[float]` becomes a verifier with
`reward_verifier`: success iff its reward >= `threshold`.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from ..errors import UserError

__all__ = ["VERIFIERS", "build_verifier", "reward_verifier", "last_number", "normalise"]

Verify = Callable[[dict, str], bool]

_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)
_ANSWER_IS = re.compile(r"answer(?:\s+is)?\s*[:=]?\s*", re.I)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def normalise(text: Any) -> str:
    s = unicodedata.normalize("NFKC", str(text)).casefold()
    s = " ".join(s.split())
    for _ in range(2):  # '"Paris".' -> 'paris'
        s = s.rstrip(".").strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
            s = s[1:-1].strip()
    return s


def _candidates(completion: str) -> list[str]:
    out = [completion]
    parts = _ANSWER_IS.split(completion)
    if len(parts) > 1:
        out.append(parts[-1].strip().splitlines()[0] if parts[-1].strip() else "")
    boxed = _BOXED.findall(completion)
    if boxed:
        out.append(boxed[-1])
    return out


def last_number(text: Any) -> float | None:
    """The last number written in `text` (1,234.5 and 1e-3 forms), or None."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def _exact(answer: str) -> Verify:
    def verify(example: dict, completion: str) -> bool:
        want = normalise(example[answer])
        return any(normalise(c) == want for c in _candidates(completion))

    return verify


def _numeric(answer: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> Verify:
    if not (rel_tol >= 0 and abs_tol >= 0):
        raise UserError(f"verifier numeric: rel_tol and abs_tol must be >= 0, got {rel_tol}, {abs_tol}")

    def verify(example: dict, completion: str) -> bool:
        want, got = last_number(example[answer]), last_number(completion)
        if want is None or got is None or not math.isfinite(got):
            return False
        return math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)

    return verify


def _regex(answer: str, pattern: str | None = None, full: bool = False, ignore_case: bool = False) -> Verify:
    flags = re.I if ignore_case else 0
    if pattern is not None:
        try:
            re.compile(pattern.replace("{answer}", "x"), flags)
        except re.error as e:
            raise UserError(f"verifier regex: pattern {pattern!r} does not compile: {e}") from None

    def verify(example: dict, completion: str) -> bool:
        if pattern is None:
            rx = str(example[answer])
        else:
            rx = pattern.replace("{answer}", re.escape(str(example[answer])))
        m = (re.fullmatch if full else re.search)(rx, completion.strip() if full else completion, flags)
        return m is not None

    return verify


def first_json(text: str) -> Any:
    """The whole text as JSON, else the first JSON object or array in it; raises ValueError if none."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "[{":
            try:
                return dec.raw_decode(text, i)[0]
            except ValueError:
                continue
    raise ValueError("no JSON value")


def _canon(value: Any, unordered: bool) -> Any:
    if isinstance(value, dict):
        return {str(k): _canon(v, unordered) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canon(v, unordered) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True)) if unordered else items
    return value


def _json(answer: str, unordered_lists: bool = False) -> Verify:
    def verify(example: dict, completion: str) -> bool:
        want = example[answer]
        if isinstance(want, str):
            want = first_json(want)
        return _canon(first_json(completion), unordered_lists) == _canon(want, unordered_lists)

    return verify


def _math(answer: str) -> Verify:
    try:
        import math_verify
    except ImportError:
        raise UserError("verifier math needs math-verify: pip install 'r3fast[math]'") from None
    import logging

    # its own SIGALRM timeouts would fight the task's time limit (checked.call_with_timeout): off,
    # and so is the warning that says they are off
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def verify(example: dict, completion: str) -> bool:
        gold = str(example[answer])
        gold = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
        g = math_verify.parse(gold, parsing_timeout=None)
        p = math_verify.parse(completion, parsing_timeout=None)
        return bool(g) and bool(p) and math_verify.verify(g, p, timeout_seconds=None) is True

    return verify


VERIFIERS: dict[str, Callable[..., Verify]] = {
    "exact": _exact,
    "numeric": _numeric,
    "regex": _regex,
    "json": _json,
    "math": _math,
}


def build_verifier(spec: str, options: dict[str, Any], *, answer: str) -> Verify:
    """The verifier named `spec` (a built-in or an import path `pkg.module:fn`), or a `UserError`."""
    if spec in VERIFIERS:
        try:
            return VERIFIERS[spec](answer, **options)
        except TypeError as e:
            raise UserError(f"verifier {spec}: {e} (options: {options!r})") from None
    from .loader import is_import_path, resolve_object

    if is_import_path(spec):
        if options:
            raise UserError(f"verifier {spec}: verifier_options are for the built-in verifiers")
        return resolve_object(spec, f"verifier {spec!r}")
    raise UserError(
        f"unknown verifier {spec!r}: one of {', '.join(VERIFIERS)}, or an import path 'pkg.module:fn'"
    )


def reward_verifier(spec: str, *, prompt: str, threshold: float) -> Verify:
    """A TRL reward function `f(prompts, completions, **columns) -> list[float]` as a verifier:
    called on one sample, success iff the reward is a finite number >= `threshold`. Conversational
    prompts (message lists) get completions as `[{"role": "assistant", "content": text}]`, as TRL
    passes them; the other columns come as keyword lists, one value each."""
    from .loader import resolve_object

    fn = resolve_object(spec, f"reward {spec!r}")

    def verify(example: dict, completion: str) -> bool:
        p = example[prompt]
        comp: Any = [{"role": "assistant", "content": completion}] if isinstance(p, list) else completion
        columns = {k: [v] for k, v in example.items() if k not in (prompt, "prompts", "completions")}
        rewards = fn(prompts=[p], completions=[comp], **columns)
        r = list(rewards)[0] if rewards is not None else None  # TRL allows None: "does not apply"
        if not isinstance(r, numbers.Real) or isinstance(r, bool):
            return False
        return bool(math.isfinite(float(r)) and float(r) >= threshold)

    return verify
