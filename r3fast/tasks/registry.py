"""Task registry: ``get_task(name, **options)`` builds a registered task.

Built-in tasks are registered by import path and imported on first use, so asking for one task
never imports the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from r3fast.tasks.base import Task

__all__ = ["register_task", "get_task", "available_tasks"]

_FACTORIES: dict[str, Callable[..., Task] | str] = {
    "countdown": "r3fast.tasks.countdown:CountdownTask",
    "function_calling": "r3fast.tasks.function_calling:FunctionCallingTask",
    "multihop": "r3fast.tasks.multihop:MultiHopTask",
    "cwe": "r3fast.tasks.cwe:CWETask",
    "dataset": "r3fast.tasks.dataset:DatasetTask",
}


def register_task(name: str, factory: Callable[..., Task], *, overwrite: bool = False) -> None:
    """Make ``get_task(name, **options)`` call ``factory(**options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError("task name must be a non-empty string")
    if not callable(factory):
        raise TypeError(f"factory for task {name!r} must be callable")
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    _FACTORIES[name] = factory


def available_tasks() -> list[str]:
    """Built-in and registered names, and those of installed packages' `r3fast.tasks` entry points."""
    from r3fast.tasks.loader import entry_point_tasks

    return sorted({*_FACTORIES, *entry_point_tasks()})


def get_task(name: str, **options: Any) -> Task:
    """The task registered as ``name``, built with ``options``; else ``name`` as an import path
    (``my_pkg.tasks:make_task``) or an entry point (r3fast.tasks.loader); unknown -> UserError."""
    if name not in _FACTORIES:
        from r3fast.tasks.loader import load_task

        return load_task(name, options, list(_FACTORIES))
    factory = _FACTORIES[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**options)
