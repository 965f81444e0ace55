"""The task contract: a prompt builder, a binary verifier and a dataset.

A task is anything with ``name``, ``build_prompt(example)``, ``verify(example, completion)``
and ``dataset(n, seed=0, split="train")``. Examples are JSON-serialisable dicts: they are stored
in the JSONL failure sets. ``make_task`` turns a user's two functions (+ examples) into a task.

Splits of a fixed example list are decided per example by a hash of its canonical JSON, so they
do not depend on ``n``, ``seed`` or the order of the list, and train/eval never overlap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import UserError
from .checked import Counters, VerifyTimeout, call_with_timeout, check_messages, short, verdict

__all__ = [
    "Example",
    "Message",
    "SPLITS",
    "Task",
    "CustomTask",
    "make_task",
    "never_raises",
    "split_of",
    "select_split",
    "check_split",
    "example_problem",
    "verify_counts",
]

Example = dict[str, Any]
Message = dict[str, str]
SPLITS = ("train", "eval")


@runtime_checkable
class Task(Protocol):
    """What the miner, the rollout and the evaluator need from a task."""

    name: str

    def build_prompt(self, example: Example) -> list[Message]:
        """Chat messages (``{"role", "content"}``) of the first attempt."""
        ...

    def verify(self, example: Example, completion: str) -> bool:
        """True iff ``completion`` solves ``example``; never raises."""
        ...

    def dataset(self, n: int | None, seed: int = 0, split: str = "train") -> list[Example]:
        """Up to ``n`` examples of ``split`` ("train" | "eval"), deterministic in ``seed``."""
        ...


def never_raises(verify: Callable[..., bool]) -> Callable[..., bool]:
    """Wrap a verifier so that any exception (user bug, garbage input) counts as a failure.

    A verifier that raised would crash a training step over one odd sample; False is the honest
    reward for an answer that cannot be checked. RecursionError/MemoryError are Exceptions too.
    Only True (or 1) is a success: ``bool("False")`` would be one.
    """

    @functools.wraps(verify)
    def wrapped(*args: Any, **kwargs: Any) -> bool:
        try:
            return verdict(verify(*args, **kwargs)) is True
        except Exception:
            return False

    return wrapped


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_of(key: str, eval_fraction: float = 0.2) -> str:
    """'eval' for a stable ``eval_fraction`` of keys, else 'train' (sha256, not Python's hash)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_fraction else "train"


def _canonical(example: Any) -> str:
    return json.dumps(example, sort_keys=True, ensure_ascii=True, default=str)


def select_split(
    examples: Sequence[Example],
    n: int | None,
    seed: int,
    split: str,
    *,
    key: Callable[[Example], str] = _canonical,
    eval_fraction: float = 0.2,
) -> list[Example]:
    """The examples of ``split`` (by hashed key), shuffled by ``seed``, the first ``n`` (all if None).

    Returns fewer than ``n`` when the split holds fewer: a fixed dataset cannot grow.
    """
    check_split(split)
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    chosen = [ex for ex in examples if split_of(key(ex), eval_fraction) == split]
    random.Random(f"{split}-{seed}").shuffle(chosen)
    return chosen if n is None else chosen[:n]


class CustomTask:
    """A user's task: prompt builder + verifier + (an example list or a dataset callable)."""

    def __init__(
        self,
        name: str,
        build_prompt: Callable[[Example], list[Message]],
        verify: Callable[[Example, str], bool],
        examples: Sequence[Example] | None = None,
        dataset: Callable[..., list[Example]] | None = None,
        eval_fraction: float = 0.2,
        verify_timeout: float = 5.0,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        if not callable(build_prompt) or not callable(verify):
            raise TypeError("build_prompt and verify must be callables")
        if (examples is None) == (dataset is None):
            raise ValueError("pass exactly one of examples= (a list) or dataset= (a callable)")
        if examples is not None:
            examples = list(examples)
            for i, ex in enumerate(examples):
                if not isinstance(ex, dict):
                    raise TypeError(f"examples[{i}] must be a dict, got {type(ex).__name__}")
                json.dumps(ex)  # fail now, not when the failure set is written
        self.name = name
        self._build_prompt = build_prompt
        self._verify = verify
        self._examples = examples
        self._dataset = dataset
        self.eval_fraction = eval_fraction
        self.verify_timeout = verify_timeout
        """Seconds one verify call may take (0: no limit); the trainer sets task.verify_timeout."""
        self.counters = Counters(name)

    def build_prompt(self, example: Example) -> list[Message]:
        """The user's messages, checked (a one-line `UserError` naming the example otherwise)."""
        try:
            messages = self._build_prompt(example)
        except Exception as e:  # a user bug on this example: say which, in one line
            raise UserError(
                f"task {self.name!r}: build_prompt({short(example)}) raised {type(e).__name__}: {e}"
            ) from None
        return check_messages(messages, self.name, example)

    def verify(self, example: Example, completion: str) -> bool:
        """True only for a True (or 1) within the time limit; an exception, a timeout or a result
        that is not a bool are failures, the last two counted (`verify_counts`)."""
        try:
            result = call_with_timeout(self._verify, (example, completion), self.verify_timeout)
        except VerifyTimeout:
            self.counters.add("verify_timeouts", f"verify took longer than {self.verify_timeout:g} s")
            return False
        except Exception:
            return False
        ok = verdict(result)
        if ok is None:
            self.counters.add(
                "verify_invalid", f"verify returned {short(result, 40)} ({type(result).__name__}), not a bool"
            )
            return False
        return ok

    def dataset(self, n: int | None, seed: int = 0, split: str = "train") -> list[Example]:
        check_split(split)
        if self._dataset is not None:
            return list(self._dataset(n, seed=seed, split=split))
        assert self._examples is not None
        return select_split(self._examples, n, seed, split, eval_fraction=self.eval_fraction)

    def __repr__(self) -> str:
        return f"CustomTask(name={self.name!r})"


def make_task(
    name: str,
    build_prompt: Callable[[Example], list[Message]],
    verify: Callable[[Example, str], bool],
    examples: Sequence[Example] | None = None,
    dataset: Callable[..., list[Example]] | None = None,
    *,
    eval_fraction: float = 0.2,
    verify_timeout: float = 5.0,
) -> CustomTask:
    """A task from a user's prompt builder and verifier; ``verify`` is wrapped to never raise.

    ``examples``: a list of dicts, split train/eval by a hash of each example.
    ``dataset``: a callable ``(n, seed=, split=) -> list[dict]`` used as is.
    ``verify_timeout``: seconds per verify call before it counts as a failure (config:
    task.verify_timeout); ``verify`` must return a bool, anything else is a failure too.
    """
    return CustomTask(name, build_prompt, verify, examples, dataset, eval_fraction, verify_timeout)


def verify_counts(task: Any) -> dict[str, int]:
    """A task's running counts of invalid and timed-out verify calls (zeros for a built-in task)."""
    counters = getattr(task, "counters", None)
    counts = getattr(counters, "counts", None)
    return dict(counts) if isinstance(counts, dict) else {"verify_invalid": 0, "verify_timeouts": 0}


def example_problem(task: Any, example: Any) -> str | None:
    """Why `example` does not fit `task` (its own `check_example`, else its prompt must build), or None."""
    if not isinstance(example, dict):
        return "the example is not an object"
    check = getattr(task, "check_example", None)
    if callable(check):
        return check(example)
    try:
        messages = task.build_prompt(example)
    except UserError as e:
        return str(e)
    except Exception as e:
        return f"build_prompt raised {type(e).__name__}: {e}"
    try:
        check_messages(messages, getattr(task, "name", "task"), example)
    except UserError as e:
        return str(e)
    return None
