"""What the long-context tasks share: examples split into ``context`` + ``question``, filler text,
a seeded example stream split train/eval by hash, and a graded ``score`` beside the binary verifier.

Example: ``{"context": str, "question": str, ...task fields}``. WiM (``r3fast.wim``) reads the context
segment by segment and asks the question at the end; ``build_prompt`` is the plain long-context
prompt (context, then question) so the same example also runs through ``r3fast eval``.

Lengths are set in tokens but generated without a tokenizer (tasks stay tokenizer-free and
deterministic): ``CHARS_PER_TOKEN`` was measured on SmolLM2's tokenizer over this filler text.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

from r3fast.tasks.base import Example, Message, check_split, split_of

__all__ = [
    "CHARS_PER_TOKEN",
    "LongContextTask",
    "filler_paragraph",
    "mentions",
]

CHARS_PER_TOKEN = 5.1  # filler text through SmolLM2-135M's tokenizer (measured: 5.08–5.14)

_ADJ = (
    "quiet old bright narrow wooden heavy green distant gentle rusty tall silver hidden broken warm "
    "small empty busy ancient careful cold golden patient round sharp soft steady strange"
).split()
_NOUN = (
    "garden river bridge lantern window market teacher harbor orchard library engine meadow tower "
    "painter village kettle journal valley carpet bicycle violin ferry forest staircase mirror "
    "workshop compass chimney tunnel"
).split()
_VERB = (
    "watched crossed painted repaired followed described carried opened measured visited cleaned "
    "noticed guarded copied circled lifted"
).split()
_TAIL = (
    "before the rain began",
    "at the end of the season",
    "while the town was asleep",
    "for no clear reason",
    "as it had done for years",
    "near the old square",
    "during the long winter",
    "without saying a word",
)


def _sentence(rng: random.Random) -> str:
    a1, a2 = rng.choice(_ADJ), rng.choice(_ADJ)
    n1, n2 = rng.choice(_NOUN), rng.choice(_NOUN)
    return f"The {a1} {n1} {rng.choice(_VERB)} the {a2} {n2} {rng.choice(_TAIL)}."


def filler_paragraph(rng: random.Random, sentences: tuple[int, int] = (3, 6)) -> str:
    """A paragraph of plausible, fact-free sentences (the haystack)."""
    return " ".join(_sentence(rng) for _ in range(rng.randint(*sentences)))


def mentions(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` as a whole word, case-insensitively."""
    low, w = text.lower(), word.lower()
    start = low.find(w)
    while start >= 0:
        end = start + len(w)
        before = low[start - 1] if start else " "
        after = low[end] if end < len(low) else " "
        if not before.isalnum() and not after.isalnum():
            return True
        start = low.find(w, start + 1)
    return False


class LongContextTask:
    """Base of the generated long-context tasks: subclasses give ``_generate(rng)`` and ``_score``.

    ``score(example, completion) -> float`` in [0, 1] (accuracy tasks: 0/1; CWE: F1); ``verify`` is
    ``score == 1``. Both never raise: a malformed example or completion scores 0.
    """

    name = "long_context"
    metric = "accuracy"
    """What `score` measures: "accuracy" (0/1) or "f1"."""
    eval_fraction = 0.2

    def __init__(self) -> None:
        self._safe_score: Callable[[Example, str], float] = _never_raises_float(self._score)

    def _generate(self, rng: random.Random) -> Example:
        raise NotImplementedError

    def _score(self, example: Example, completion: str) -> float:
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> float:
        return self._safe_score(example, completion)

    def verify(self, example: Example, completion: str) -> bool:
        return self.score(example, completion) >= 1.0

    def build_prompt(self, example: Example) -> list[Message]:
        return [{"role": "user", "content": f"```\n{example['context']}\n```\n{example['question']}"}]

    def _stream(self, rng: random.Random) -> Iterator[Example]:
        while True:
            yield self._generate(rng)

    def dataset(self, n: int | None, seed: int = 0, split: str = "train") -> list[Example]:
        """``n`` examples of ``split``, deterministic in ``seed``; the split of an example is a hash
        of its whole text, so train and eval never share one."""
        check_split(split)
        if n is None or n < 0:
            raise ValueError(f"generated tasks need a count n >= 0, got {n}")
        out: list[Example] = []
        for ex in self._stream(random.Random(f"{self.name}-{split}-{seed}")):
            if len(out) == n:
                return out
            key = hashlib.sha256((ex["context"] + ex["question"]).encode()).hexdigest()
            if split_of(key, self.eval_fraction) == split:
                out.append(ex)
        raise AssertionError("unreachable")


def _never_raises_float(fn: Callable[..., float]) -> Callable[..., float]:
    """Like ``base.never_raises`` but for a graded score: any exception or NaN scores 0, the rest is
    clipped to [0, 1]."""

    def wrapped(example: Any, completion: Any) -> float:
        try:
            value = float(fn(example, completion))
        except Exception:
            return 0.0
        return min(1.0, max(0.0, value)) if value == value else 0.0

    return wrapped
