"""The failure-set JSONL format, read without importing torch (so it is checked up front)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

__all__ = ["read_failure_records"]


def read_failure_records(path: str | Path) -> list[dict]:
    """Every record of a failure set; a malformed line raises `UserError` naming file and line."""
    records = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"failure set {path}: {e.strerror or e}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("expected a JSON object")
                ex, attempt = rec["example"], rec["attempt"]
                if not isinstance(ex, dict) or not isinstance(attempt, str):
                    raise ValueError("'example' must be an object and 'attempt' a string")
            except (ValueError, KeyError) as e:
                what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
                raise UserError(f"{path}:{lineno}: bad failure record: {what}") from None
            records.append(rec)
    if not records:
        raise UserError(f"{path}: no failure records")
    return records
