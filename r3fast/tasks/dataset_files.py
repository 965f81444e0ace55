"""Rows of a user's dataset, from a local file or a `datasets.save_to_disk` directory.

JSONL and JSON are read with the standard library; CSV/TSV, Parquet and `save_to_disk` directories
through the `datasets` library (`pip install 'r3fast[datasets]'`). Returns `{split: rows}`: one
split ("train") for a plain file; a DatasetDict directory or a JSON object of lists keeps its own.
Rows come back as JSON-safe dicts, because examples are stored in the JSONL failure sets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["FORMATS", "read_rows"]

FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", "a save_to_disk directory")


def _json_safe(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(
            f"{where}: a row must be an object (a mapping of column -> value), got {type(row).__name__}"
        )
    return json.loads(json.dumps(row, default=str))  # dates, numpy scalars -> JSON values


def _jsonl(path: Path) -> dict[str, list[dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(_json_safe(json.loads(line), f"{path}:{i}"))
            except ValueError as e:
                if isinstance(e, UserError):
                    raise
                raise UserError(f"{path}:{i}: not valid JSON ({e})") from None
    return {"train": rows}


def _json(path: Path) -> dict[str, list[dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return {k: [_json_safe(r, f"{path} [{k}][{i}]") for i, r in enumerate(v)] for k, v in data.items()}
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of rows (or an object of split -> list of rows)")
    return {"train": [_json_safe(r, f"{path}[{i}]") for i, r in enumerate(data)]}


def _with_datasets(path: Path) -> dict[str, list[dict]]:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{path}: reading {path.suffix or 'a save_to_disk directory'} needs the datasets library: "
            "pip install 'r3fast[datasets]' (JSONL and JSON need nothing)"
        ) from None
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            kind = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}[path.suffix.lower()]
            kw = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", **kw)
    except Exception as e:  # a malformed file: the library's reason, on one line
        raise UserError(
            f"{path}: could not read it ({type(e).__name__}: {' '.join(str(e).split())})"
        ) from None
    parts = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    return {k: [_json_safe(r, f"{path} [{k}]") for r in d.to_list()] for k, d in parts.items()}


def read_rows(path: str | Path) -> dict[str, list[dict]]:
    """`{split: [row, ...]}` from `path`; a one-line `UserError` for a missing or unreadable one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"dataset {path}: no such file or directory")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix in (".csv", ".tsv", ".parquet"):
        return _with_datasets(p)
    if suffix == ".jsonl":
        return _jsonl(p)
    if suffix == ".json":
        return _json(p)
    raise UserError(f"dataset {path}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}")
