"""Tasks that are not built in: by import path (`my_pkg.tasks:make_task`) or by an entry point.

A third-party package makes its task available by name through the `r3fast.tasks` entry-point
group, in its pyproject.toml:

    [project.entry-points."r3fast.tasks"]
    sudoku = "my_pkg.sudoku:SudokuTask"

The object named (a factory function or a class) is called with the task's `options`; what it
returns must have `name`, `build_prompt`, `verify` and `dataset`. Every way this can go wrong
(module not found, attribute missing, factory raised, not a task) is a one-line `UserError`, so
`r3fast train` reports it before any model loads.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ..errors import UserError

__all__ = [
    "ENTRY_POINT_GROUP",
    "check_task_object",
    "entry_point_tasks",
    "is_import_path",
    "load_task",
    "resolve_object",
]

ENTRY_POINT_GROUP = "r3fast.tasks"
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_TASK_METHODS = ("build_prompt", "verify", "dataset")


def is_import_path(name: str) -> bool:
    """`package.module:attr` (attr may be dotted, `module:Class.factory`)."""
    return bool(_IMPORT_PATH.match(name))


def entry_point_tasks() -> dict[str, metadata.EntryPoint]:
    """Task names registered by installed distributions (first one wins on a clash)."""
    out: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep)
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def resolve_object(path: str, label: str) -> Callable[..., Any]:
    """The callable at import path `module:attr`, or a one-line `UserError` labelled `label`."""
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(f"{label}: module {e.name or module_name!r} not found (is it installed?)") from None
    except Exception as e:  # the user's module raised while importing
        raise UserError(f"{label}: importing {module_name} raised {_one_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{label}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{label}: {path} is a {type(obj).__name__}, not a task factory or class")
    return obj


def check_task_object(task: Any, label: str) -> Any:
    """`task` if it has the task contract's attributes, else a one-line `UserError` saying what lacks."""
    missing = [m for m in _TASK_METHODS if not callable(getattr(task, m, None))]
    if not isinstance(getattr(task, "name", None), str):
        missing.insert(0, "name (str)")
    if missing:
        raise UserError(
            f"{label} returned a {type(task).__name__}, not a Task: it lacks {', '.join(missing)} "
            "(see r3fast.tasks.Task, or build one with r3fast.tasks.make_task)"
        )
    return task


def _build(factory: Callable[..., Any], options: dict[str, Any], label: str) -> Any:
    try:
        task = factory(**options)
    except UserError as e:
        raise UserError(f"{label}: {e}") from None
    except Exception as e:  # a bad option or a bug in the user's factory: one line, naming it
        raise UserError(f"{label} with options {options!r} raised {_one_line(e)}") from None
    return check_task_object(task, label)


def load_task(name: str, options: dict[str, Any], builtin: list[str]) -> Any:
    """A task named by import path or entry point; `UserError` for an unknown name."""
    if is_import_path(name):
        return _build(resolve_object(name, f"task {name!r}"), options, f"task {name!r}")
    eps = entry_point_tasks()
    if name in eps:
        ep = eps[name]
        label = f"task {name!r} (entry point {ep.value!r} of {ep.dist.name if ep.dist else '?'})"
        try:
            factory = ep.load()
        except Exception as e:
            raise UserError(f"{label}: loading it raised {_one_line(e)}") from None
        if not callable(factory):
            raise UserError(f"{label}: {ep.value} is not a task factory or class")
        return _build(factory, options, label)
    known = sorted({*builtin, *eps})
    raise UserError(
        f"unknown task {name!r}; available: {', '.join(known)}, "
        "or an import path like 'my_pkg.tasks:make_task'"
    )
