"""Countdown: combine the given numbers with + - * / (each exactly once) to hit the target.

Example: ``{"numbers": [int, ...], "target": int}``. The generator only emits solvable tasks: the
target is the value of a random expression over the drawn numbers (exact rationals), kept when it
is an integer inside ``target_range``. ``solve`` is a small exact solver (fine up to ~5 numbers).

Answer format: the reply's last arithmetic expression (e.g. ``(1 + 2) * 3 = 9``) is the answer.
The verifier reads it with ``ast`` (never eval): int literals, binary + - * /, parentheses; every
given number used exactly once; exact ``Fraction`` arithmetic; optional ``= rhs`` must equal the
target too. It never raises and caps the work on pathological text before parsing.

The defaults are the paper's setting (3-4 numbers <= 100, targets <= 999); run presets set their
own knobs (r3fast/presets.py).
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from r3fast.tasks.base import Example, Message, check_split, split_of

__all__ = [
    "CountdownTask",
    "generate",
    "solve",
    "verify",
    "build_prompt",
    "extract_equation",
]

_OPS = "+-*/"
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

# Guards: a model reply is a few hundred characters; anything beyond these limits is not a
# Countdown answer, and the limits keep ast.parse/int() far from recursion and size trouble.
_TAIL_CHARS = 2000  # only the end of the reply is scanned
_MAX_EXPR_CHARS = 300
_MAX_DEPTH = 32  # parenthesis nesting
_MAX_DIGITS = 18  # per integer literal (Python also caps int('...') at 4300 digits)

# Spellings of the operators a model may use ('x'/'X' become '*' only inside an expression run),
# and LaTeX math delimiters, whose parentheses would otherwise unbalance the equation.
_NORMALISE = (
    ("\\(", " "),
    ("\\)", " "),
    ("\\left", ""),
    ("\\right", ""),
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\\div", "/"),
    ("×", "*"),
    ("·", "*"),
    ("÷", "/"),
    ("−", "-"),
    ("–", "-"),
)
# A run of expression characters on one line: ASCII digits only ('３', '٣' are not digits here),
# a '.' only between digits (a decimal point, rejected later; '4. 3 * 4' is a sentence end).
_RUN = re.compile(r"(?:[0-9()+\-*/=xX \t]|(?<=[0-9])\.(?=[0-9]))+")
_INT = re.compile(r"-?[0-9]+")
_LONG_INT = re.compile(rf"[0-9]{{{_MAX_DIGITS + 1},}}")


# ---------------------------------------------------------------- verifier


def extract_equation(completion: str) -> str | None:
    """The last run of expression characters that holds a digit and an operator, or None."""
    if not isinstance(completion, str):
        return None
    text, cut = completion[-_TAIL_CHARS:], len(completion) > _TAIL_CHARS
    for old, new in _NORMALISE:
        text = text.replace(old, new)
    for m in reversed(list(_RUN.finditer(text))):
        if cut and m.start() == 0:  # the cut may have gone through this run
            continue
        # edges: markdown bold '**', or the 'x' of a word ("syntax: 1 + 2"); neither is valid there
        run = m.group().strip(" \t*xX").replace("x", "*").replace("X", "*")
        if any(c.isdigit() for c in run) and any(c in _OPS for c in run):
            return run
    return None


def _depth_ok(expr: str) -> bool:
    depth = 0
    for c in expr:
        depth += (c == "(") - (c == ")")
        if depth > _MAX_DEPTH or depth < 0:
            return False
    return depth == 0


def _evaluate(expr: str, numbers: list[int], ops: str) -> Fraction | None:
    """Exact value of ``expr`` if it uses exactly ``numbers`` and only ``ops``, else None."""
    if not expr or len(expr) > _MAX_EXPR_CHARS or not _depth_ok(expr) or _LONG_INT.search(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    literals: list[int] = []

    def check(node: ast.AST) -> bool:  # shape and operators, before any arithmetic
        if isinstance(node, ast.Constant):
            if type(node.value) is not int:  # floats, strings, True
                return False
            literals.append(node.value)
            return True
        if isinstance(node, ast.BinOp) and _AST_OPS.get(type(node.op), "?") in ops:
            return check(node.left) and check(node.right)
        return False  # UnaryOp (numbers are positive), Call, Name, Pow, FloorDiv, ...

    if not check(tree.body) or Counter(literals) != Counter(numbers):
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        assert isinstance(node, ast.BinOp)
        a, b = value(node.left), value(node.right)
        op = _AST_OPS[type(node.op)]
        return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b

    try:
        return value(tree.body)
    except ZeroDivisionError:
        return None


def _valid_example(example: Any) -> bool:
    if not isinstance(example, dict):
        return False
    numbers, target = example.get("numbers"), example.get("target")
    return (
        isinstance(numbers, list)
        and len(numbers) > 0
        and all(type(v) is int for v in numbers)
        and type(target) is int
    )


def verify(example: Example, completion: str, ops: str = _OPS) -> bool:
    """True iff the last equation in ``completion`` uses each number once and equals the target."""
    try:
        if not _valid_example(example):
            return False
        run = extract_equation(completion)
        if run is None:
            return False
        parts = [p.strip() for p in run.split("=")]
        if len(parts) > 2:
            return False
        lhs, rhs = parts[0], (parts[1] if len(parts) == 2 else None)
        if rhs is not None and _INT.fullmatch(lhs) and not _INT.fullmatch(rhs):
            lhs, rhs = rhs, lhs  # "9 = (1 + 2) * 3"
        if rhs is not None:
            if not _INT.fullmatch(rhs) or len(rhs) > _MAX_DIGITS + 1 or int(rhs) != example["target"]:
                return False
        result = _evaluate(lhs, example["numbers"], ops)
        return result is not None and result == example["target"]
    except Exception:  # belt and braces: a verifier must never crash training
        return False


# ---------------------------------------------------------------- prompt


def build_prompt(example: Example, ops: str = _OPS) -> list[Message]:
    """One plain user message; short, because a 135M model has to follow it.

    The format is stated, not shown: with a worked example ("(1 + 2) * 3 = 9") SmolLM2-135M
    copied the example in most replies (4 % right on 2-number additions vs 19-25 % without).
    """
    nums = [str(v) for v in example["numbers"]]
    listed = nums[0] if len(nums) == 1 else ", ".join(nums[:-1]) + " and " + nums[-1]
    allowed = " ".join(o for o in _OPS if o in ops)
    target = example["target"]
    text = (
        f"Write an equation with the numbers {listed} that equals {target}. "
        f"Allowed operations: {allowed} and parentheses. Use each number exactly once. "
        f"Reply with only the equation, ending with = {target}"
    )
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- solver and generator


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def _wrap(text: str) -> str:
    return f"({text})" if " " in text else text


def solve(numbers: list[int], target: int, ops: str = _OPS) -> str | None:
    """An expression using each number once that equals ``target`` (exact), or None."""
    goal = Fraction(target)
    dead: set[tuple[Fraction, ...]] = set()  # value multisets already shown unsolvable

    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == goal else None
        key = tuple(sorted(v for v, _ in items))
        if key in dead:
            return None
        for i, (a, ta) in enumerate(items):
            for j, (b, tb) in enumerate(items):
                if i == j:
                    continue
                rest = [it for k, it in enumerate(items) if k not in (i, j)]
                for op in ops:
                    if op in "+*" and i > j:  # commutative: one order suffices
                        continue
                    v = _apply(op, a, b)
                    if v is not None and (found := search(rest + [(v, f"{_wrap(ta)} {op} {_wrap(tb)}")])):
                        return found
        dead.add(key)
        return None

    return search([(Fraction(v), str(v)) for v in numbers]) if numbers else None


# Upper bounds: beyond them generation and the exact solver take minutes to hours, and no
# model reads such a prompt (the paper uses 3-4 numbers <= 100).
MAX_NUMBERS = 8
MAX_VALUE = 10**6


def _range(value: Any, what: str, low: int, high: int = 10**18) -> tuple[int, int]:
    try:
        lo, hi = (value, value) if isinstance(value, int) else tuple(value)
    except (TypeError, ValueError):
        lo = hi = None
    if type(lo) is not int or type(hi) is not int or not low <= lo <= hi <= high:
        raise ValueError(f"{what} must be an int or (lo, hi) with {low} <= lo <= hi <= {high}, got {value!r}")
    return lo, hi


def _random_target(rng: random.Random, numbers: list[int], ops: str) -> Fraction | None:
    """Value of a random expression tree over ``numbers`` (each once), None on division by 0."""
    values = [Fraction(v) for v in numbers]
    while len(values) > 1:
        i, j = rng.sample(range(len(values)), 2)
        v = _apply(rng.choice(ops), values[i], values[j])
        if v is None:
            return None
        values = [x for k, x in enumerate(values) if k not in (i, j)] + [v]
    return values[0]


def _stream(
    rng: random.Random, num_numbers: Any, number_range: Any, target_range: Any, ops: str
) -> Iterator[Example]:
    """Endless solvable examples; ValueError when the knobs admit (almost) none."""
    k_lo, k_hi = _range(num_numbers, "num_numbers", 2, MAX_NUMBERS)
    n_lo, n_hi = _range(number_range, "number_range", 1, MAX_VALUE)
    t_lo, t_hi = _range(target_range, "target_range", -(10**18))
    if not ops or set(ops) - set(_OPS):
        raise ValueError(f"ops must be a non-empty subset of {_OPS!r}, got {ops!r}")
    misses = 0
    while True:
        numbers = [rng.randint(n_lo, n_hi) for _ in range(rng.randint(k_lo, k_hi))]
        for _ in range(32):  # a few expression trees per draw of numbers
            t = _random_target(rng, numbers, ops)
            if t is not None and t.denominator == 1 and t_lo <= t <= t_hi:
                misses = 0
                yield {"numbers": numbers, "target": int(t)}
                break
        else:
            misses += 1
            if misses > 500:  # 16k random trees without a hit: the knobs admit (almost) none
                raise ValueError(
                    f"no solvable Countdown task found for num_numbers={num_numbers}, "
                    f"number_range={number_range}, target_range={target_range}, ops={ops!r}"
                )


def generate(
    n: int,
    seed: int = 0,
    *,
    num_numbers: int | tuple[int, int] = (3, 4),
    number_range: tuple[int, int] = (1, 100),
    target_range: tuple[int, int] = (1, 999),
    ops: str = _OPS,
) -> list[Example]:
    """``n`` solvable tasks (repeats possible), deterministic in ``seed``."""
    stream = _stream(random.Random(seed), num_numbers, number_range, target_range, ops)
    return [next(stream) for _ in range(n)]


def _key(example: Example) -> str:
    """Order-free identity of a task: [4, 2] -> 8 and [2, 4] -> 8 are the same task."""
    return json.dumps([sorted(example["numbers"]), example["target"]])


@dataclass
class CountdownTask:
    """Countdown with a difficulty setting; ``dataset`` splits tasks train/eval by a hash of the
    (sorted numbers, target) key, so the splits never share a task, whatever ``n`` and ``seed``."""

    num_numbers: int | tuple[int, int] = (3, 4)
    """How many numbers per task: an int or an inclusive (lo, hi) range."""
    number_range: tuple[int, int] = (1, 100)
    """Inclusive range of each number (>= 1)."""
    target_range: tuple[int, int] = (1, 999)
    """Inclusive range of the target."""
    ops: str = _OPS
    """Allowed operators, a subset of '+-*/'; the verifier rejects the others."""
    eval_fraction: float = 0.2
    """Share of the task space (by key hash) reserved for the eval split."""
    name: str = field(default="countdown", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_numbers, int):
            self.num_numbers = tuple(self.num_numbers)  # type: ignore[assignment]
        self.number_range = tuple(self.number_range)  # type: ignore[assignment]
        self.target_range = tuple(self.target_range)  # type: ignore[assignment]
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        next(self._stream(random.Random(0)))  # validate the knobs now, not at dataset() time

    def _stream(self, rng: random.Random) -> Iterator[Example]:
        return _stream(rng, self.num_numbers, self.number_range, self.target_range, self.ops)

    def build_prompt(self, example: Example) -> list[Message]:
        return build_prompt(example, self.ops)

    def check_example(self, example: Example) -> str | None:
        """Why a stored example (a failure set's) is not a Countdown task, or None."""
        numbers, target = example.get("numbers"), example.get("target")
        if not isinstance(numbers, list) or not 1 <= len(numbers) <= MAX_NUMBERS:
            return f"'numbers' must be a list of 1 to {MAX_NUMBERS} integers, got {numbers!r:.60}"
        if not all(type(v) is int and 0 < v <= MAX_VALUE for v in numbers):
            return f"'numbers' must hold integers in [1, {MAX_VALUE}], got {numbers!r:.60}"
        if type(target) is not int or abs(target) > 10**18:
            return f"'target' must be an integer, got {target!r:.60}"
        return None

    def verify(self, example: Example, completion: str) -> bool:
        return verify(example, completion, self.ops)

    def dataset(self, n: int | None, seed: int = 0, split: str = "train") -> list[Example]:
        """``n`` tasks of ``split``; distinct while the task space allows, then repeats."""
        check_split(split)
        if n is None or n < 0:
            raise ValueError(f"n must be an int >= 0 for a generated task, got {n!r}")
        stream = self._stream(random.Random(f"countdown-{split}-{seed}"))
        out: list[Example] = []
        seen: set[str] = set()
        rejected = 0  # consecutive candidates turned down
        repeats = False  # 2 numbers <= 10 give only ~200 distinct tasks: once they run out, allow repeats
        while len(out) < n:
            ex = next(stream)
            key = _key(ex)
            if split_of(key, self.eval_fraction) != split or (key in seen and not repeats):
                rejected += 1
                repeats = repeats or rejected >= 1000
            else:
                out.append(ex)
                seen.add(key)
                rejected = 0
            if rejected > 100_000:
                raise ValueError(f"the {split} split of this Countdown setting is empty")
        return out
