"""Typed config values: one coercion for YAML, TOML, the command line and Python alike.

`coerce(value, hint)` turns what a file or a flag holds into the field's declared type, or raises
`ConfigError` with a one-line reason. YAML 1.1 reads `1e-6` as a string and TOML has no null, so
the rules are by target type, not by source: a float field takes 1, 1.0 or "1e-6"; an int field
takes 3 or "3" but not "ten" or 2.5; a bool field takes true/false (also "true", "no", "0"), never
a non-empty string just because it is truthy.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
import types
import typing
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["coerce", "describe", "field_docs"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _union_args(hint: Any) -> tuple | None:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else None


def describe(hint: Any) -> str:
    """A short human name for a type hint: `int`, `float | str`, `one of hf, vllm`."""
    args = _union_args(hint)
    if args is not None:
        return " | ".join("null" if a is type(None) else describe(a) for a in args)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is not None:
        inner = ", ".join(describe(a) for a in typing.get_args(hint) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    return getattr(hint, "__name__", str(hint))


def _scalar(value: Any, hint: type) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                out = None
        else:
            out = None
        if out is not None and math.isfinite(out):
            return out
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `output_dir: 2024` in YAML is an int
    raise ValueError


def _coerce(value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    args = _union_args(hint)
    if args is not None:
        if value is None and type(None) in args:
            return None
        for opt in args:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt)
            except ValueError:
                continue
        raise ValueError
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint) and isinstance(value, str):
            return value
        raise ValueError
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ValueError
        return tuple(_coerce(v, h) for v, h in zip(value, items))
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # `--trainer.report_to jsonl,wandb`
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_coerce(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)
    if hint in (bool, int, float, str):
        return _scalar(value, hint)
    raise TypeError(f"no coercion for type {hint!r}")  # a bug in a config class, not user input


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint`, or `ConfigError("key: cannot read 'x' as int")`."""
    try:
        out = _coerce(value, hint)
    except ValueError:
        raise ConfigError(f"{key}: cannot read {_short(value)} as {describe(hint)}") from None
    if type(out) is int and not -(2**63) <= out < 2**63:  # torch, numpy and JSON readers stop at 64 bits
        raise ConfigError(f"{key}: {_short(out)} does not fit in a 64-bit integer")
    return out


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"{str(value)[:12]}..."
    return text if len(text) <= 120 else text[:117] + "..."


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (its documentation), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
