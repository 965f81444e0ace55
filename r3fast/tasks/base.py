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
    """

    @functools.wraps(verify)
    def wrapped(*args: Any, **kwargs: Any) -> bool:
        try:
            return bool(verify(*args, **kwargs))
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
        self._verify = never_raises(verify)
        self._examples = examples
        self._dataset = dataset
        self.eval_fraction = eval_fraction

    def build_prompt(self, example: Example) -> list[Message]:
        return self._build_prompt(example)

    def verify(self, example: Example, completion: str) -> bool:
        return self._verify(example, completion)

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
) -> CustomTask:
    """A task from a user's prompt builder and verifier; ``verify`` is wrapped to never raise.

    ``examples``: a list of dicts, split train/eval by a hash of each example.
    ``dataset``: a callable ``(n, seed=, split=) -> list[dict]`` used as is.
    """
    return CustomTask(name, build_prompt, verify, examples, dataset, eval_fraction)
