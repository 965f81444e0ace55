"""`task.name: dataset`: a user's own prompts and answers, with a ready verifier, from YAML alone.

    task:
      name: dataset
      options:
        path: data/qa.jsonl           # .jsonl .json .csv .tsv .parquet, or a save_to_disk directory
        prompt: question              # column: a string, or chat messages [{role, content}, ...]
        answer: answer                # column the verifier reads
        verifier: numeric             # exact | numeric | regex | json | math | pkg.module:fn
        verifier_options: {rel_tol: 1.0e-4}

`reward: pkg.module:fn` takes a TRL reward function instead (success iff reward >= reward_threshold).
Splits: `eval_path` (a second file), else the dataset's own (`train_split` / `eval_split`, e.g.
a DatasetDict with train/test), else a stable hash split of the rows (`eval_fraction`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import CustomTask, Example, Message, check_split
from .dataset_files import read_rows
from .verifiers import VERIFIERS, build_verifier, reward_verifier

__all__ = ["DatasetTask"]

_EVAL_SPLITS = ("eval", "test", "validation", "valid")


def _prompt_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "is empty"
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return None
    return "must be a string or a list of {role, content} messages"


class DatasetTask(CustomTask):
    """Rows of a local dataset; a verifier chosen by name or import path, or a TRL reward function."""

    def __init__(
        self,
        path: str,
        *,
        prompt: str = "prompt",
        answer: str = "answer",
        system: str | None = None,
        system_column: str | None = None,
        verifier: str = "exact",
        verifier_options: dict[str, Any] | None = None,
        reward: str | None = None,
        reward_threshold: float = 1.0,
        eval_path: str | None = None,
        train_split: str = "train",
        eval_split: str | None = None,
        eval_fraction: float = 0.2,
        name: str | None = None,
        verify_timeout: float = 5.0,
    ) -> None:
        if not 0 < eval_fraction < 1:
            raise UserError(f"task dataset: eval_fraction must be in (0, 1), got {eval_fraction}")
        self.prompt_column, self.answer_column = prompt, answer
        self.system, self.system_column = system, system_column
        self.splits = self._load_splits(path, eval_path, train_split, eval_split)
        pattern = (verifier_options or {}).get("pattern")
        needs_answer = (
            reward is None
            and verifier in VERIFIERS
            and not (verifier == "regex" and isinstance(pattern, str) and "{answer}" not in pattern)
        )
        self._check_columns(path, needs_answer)
        if reward is not None:
            verify = reward_verifier(reward, prompt=prompt, threshold=float(reward_threshold))
            self.verifier_name = f"reward {reward} >= {reward_threshold:g}"
        else:
            verify = build_verifier(verifier, dict(verifier_options or {}), answer=answer)
            self.verifier_name = verifier
        rows = self.splits.get("all")
        super().__init__(
            name or Path(path).stem,
            self._messages,
            verify,
            examples=rows,
            dataset=None if rows is not None else self._own_split,
            eval_fraction=eval_fraction,
            verify_timeout=verify_timeout,
        )

    @staticmethod
    def _load_splits(path: str, eval_path: str | None, train: str, eval_: str | None) -> dict[str, list]:
        """{"train", "eval"} when the data brings its split, else {"all"} for the hash split."""
        parts = read_rows(path)
        if eval_path is not None:
            other = read_rows(eval_path)
            return {
                "train": [r for p in parts.values() for r in p],
                "eval": [r for p in other.values() for r in p],
            }
        if len(parts) == 1 and eval_ is None:
            return {"all": next(iter(parts.values()))}
        if train not in parts:
            raise UserError(f"dataset {path}: no split {train!r} (train_split); it has {sorted(parts)}")
        eval_ = eval_ or next((s for s in _EVAL_SPLITS if s in parts), None)
        if eval_ is None:
            return {"all": parts[train]}  # no held-out split of its own: hash-split the train rows
        if eval_ not in parts:
            raise UserError(f"dataset {path}: no split {eval_!r} (eval_split); it has {sorted(parts)}")
        return {"train": parts[train], "eval": parts[eval_]}

    def _check_columns(self, path: str, needs_answer: bool) -> None:
        rows = [r for split in self.splits.values() for r in split]
        if not rows:
            raise UserError(f"dataset {path}: no rows")
        cols = [self.prompt_column] + ([self.answer_column] if needs_answer else [])
        cols += [self.system_column] if self.system_column else []
        for i, row in enumerate(rows):
            missing = [c for c in cols if c not in row]
            if missing:
                raise UserError(
                    f"dataset {path}: row {i} has no column {missing[0]!r} (its columns: {sorted(row)}); "
                    "set task.options.prompt / answer / system_column to the dataset's names"
                )
            why = _prompt_problem(row[self.prompt_column])
            if why:
                raise UserError(f"dataset {path}: row {i}: column {self.prompt_column!r} {why}")

    def _messages(self, example: Example) -> list[Message]:
        value = example[self.prompt_column]
        msgs = [dict(m) for m in value] if isinstance(value, list) else [{"role": "user", "content": value}]
        system = example.get(self.system_column) if self.system_column else self.system
        if system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": str(system)})
        return msgs

    def _own_split(self, n: int | None, seed: int = 0, split: str = "train") -> list[Example]:
        check_split(split)
        rows = list(self.splits[split])
        random.Random(f"{split}-{seed}").shuffle(rows)
        return rows if n is None else rows[:n]

    def check_example(self, example: Any) -> str | None:
        """Why a failure-set example does not fit this dataset's columns, or None."""
        if not isinstance(example, dict) or self.prompt_column not in example:
            return f"the example has no column {self.prompt_column!r}"
        why = _prompt_problem(example[self.prompt_column])
        return f"column {self.prompt_column!r} {why}" if why else None

    def __repr__(self) -> str:
        return f"DatasetTask(name={self.name!r}, verifier={self.verifier_name!r})"
