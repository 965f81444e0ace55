"""A failure and the failure-set JSONL format: one `Failure.to_record()` per line.

Torch-free on purpose: `validate` reads the whole file up front, before any model loads.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

__all__ = ["Failure", "read_failures"]


@dataclass(kw_only=True)
class Failure:
    """A first attempt the task's verifier rejected, with what is needed to reproduce it."""

    example: dict
    """The task example (prompt fields and the answer the verifier checks)."""
    attempt: str
    """The failed first answer, as text (it re-enters the conversation as an assistant turn)."""
    attempt_ids: list[int] = field(default_factory=list)
    """The sampler's token ids of `attempt` (empty when the record was written by hand)."""
    example_index: int | None = None
    """Position of `example` in the mined example list."""
    try_index: int = 0
    """Which kept failure of that example this is (JSON key "try")."""
    model: str = ""
    task: str = ""
    sampling: dict = field(default_factory=dict)
    """The SamplingParams the attempt was drawn with, as a dict (n, temperature, top_p,
    max_new_tokens, seed, stop_token_ids)."""

    def to_record(self) -> dict:
        """The JSON object written as one line of a failure set."""
        rec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        rec["try"] = rec.pop("try_index")
        return rec

    @classmethod
    def from_record(cls, rec: object) -> Failure:
        """Inverse of `to_record`; only "example" and "attempt" are required. Raises ValueError."""
        if not isinstance(rec, dict):
            raise ValueError("expected a JSON object")
        rec = dict(rec)
        if "try" in rec:
            rec["try_index"] = rec.pop("try")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(rec) - names):
            raise ValueError(f"unknown field(s) {unknown}")
        for key in ("example", "attempt"):
            if key not in rec:
                raise ValueError(f"missing field {key!r}")
        if not isinstance(rec["example"], dict) or not isinstance(rec["attempt"], str):
            raise ValueError("'example' must be an object and 'attempt' a string")
        ids = rec.get("attempt_ids", [])
        if not isinstance(ids, list) or not all(type(t) is int for t in ids):
            raise ValueError("'attempt_ids' must be a list of integers")
        if not isinstance(rec.get("sampling", {}), dict):
            raise ValueError("'sampling' must be an object")
        return cls(**rec)


MAX_LINE_BYTES = 1 << 20  # a failure record is a prompt's example plus one short answer
MAX_ATTEMPT_CHARS = 50_000


def _lines(f, path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of each line, refusing one longer than MAX_LINE_BYTES
    before it is read whole."""
    offset = 0
    for lineno in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes, not a failure record")
        yield lineno, offset, raw
        offset += len(raw)


def read_failures(
    path: str | Path, check: Callable[[dict], str | None] | None = None, task: str = "the task"
) -> list[Failure]:
    """Every failure of a failure set; a malformed line raises `UserError` naming file and line.
    `check(example)` says why an example does not fit the task (None when it does)."""
    failures = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"failure set {path}: {e.strerror or e}") from None
    with f:
        for lineno, offset, raw in _lines(f, path):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not UTF-8 (byte offset {offset + e.start})") from None
            if not line.strip():
                continue
            try:
                rec = Failure.from_record(json.loads(line))
            except RecursionError:
                raise UserError(f"{path}:{lineno}: bad failure record: nested too deeply") from None
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise UserError(f"{path}:{lineno}: bad failure record: {e}") from None
            if len(rec.attempt) > MAX_ATTEMPT_CHARS:
                raise UserError(
                    f"{path}:{lineno}: attempt of {len(rec.attempt)} characters (at most {MAX_ATTEMPT_CHARS})"
                )
            why = check(rec.example) if check is not None else None
            if why:
                raise UserError(f"{path}:{lineno}: example does not fit {task}: {why}")
            failures.append(rec)
    if not failures:
        raise UserError(f"{path}: no failure records")
    return failures
