"""A user's task functions, held to their contract: verifiers that cannot lie or hang, prompt
builders whose result is checked.

- `verify` must return exactly a bool (or 0/1): anything else ("False", NaN, None) is counted
  as `verify_invalid` and scored as a failure, never as a success; a call past `timeout`
  seconds is abandoned, counted as `verify_timeouts` and scored as a failure. Each kind is warned
  about once per task.
- `build_prompt` must return a non-empty list of `{"role": str, "content": str}` messages; anything
  else is a one-line `UserError` naming the example.

The time limit uses SIGALRM in the main thread (it interrupts a busy loop or a sleep) and a
watchdog thread elsewhere (the call is abandoned; a thread cannot be killed).
"""

from __future__ import annotations

import json
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import UserError

__all__ = ["VerifyTimeout", "call_with_timeout", "check_messages", "short", "verdict"]


class VerifyTimeout(Exception):
    """The verifier ran past its time limit."""


class _Alarm(BaseException):  # not an Exception: a verifier's `except Exception` cannot swallow it
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm


def call_with_timeout(fn: Callable[..., Any], args: tuple, seconds: float) -> Any:
    """`fn(*args)`, or `VerifyTimeout` after `seconds` (<= 0: no limit)."""
    if seconds <= 0:
        return fn(*args)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        old = signal.signal(signal.SIGALRM, _on_alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, seconds)
                return fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        except _Alarm:
            raise VerifyTimeout from None
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as e:  # handed to the caller's thread
            out.append((False, e))

    worker = threading.Thread(target=run, daemon=True, name="r3fast-verify")
    worker.start()
    worker.join(seconds)
    if not out:
        raise VerifyTimeout
    ok, value = out[0]
    if not ok:
        raise value
    return value


def verdict(result: Any) -> bool | None:
    """True/False for a bool or 0/1 (numpy's bool too); None for anything else."""
    if result is True or result is False:
        return result
    if type(result) is int and result in (0, 1):
        return bool(result)
    if type(result).__module__ == "numpy" and type(result).__name__ in ("bool", "bool_"):
        return bool(result)
    return None


def short(example: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(example, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(example))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_messages(messages: Any, task: str, example: Any) -> list[dict[str, str]]:
    """`messages` if it is a non-empty list of {role, content: str} dicts, else `UserError`."""
    why = None
    if not isinstance(messages, list) or not messages:
        why = f"returned {type(messages).__name__} {short(messages, 40)}"
    else:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                why = f"message {i} is {short(m, 40)} (no 'role' string)"
            elif not isinstance(m.get("content"), str):
                why = f"message {i} has no 'content' string"
            if why:
                break
    if why:
        raise UserError(
            f"task {task!r}: build_prompt({short(example)}) {why}; it must return a non-empty list of "
            "{'role': str, 'content': str} messages"
        )
    return messages


class Counters:
    """What a task's verifier got wrong, for the metrics; one warning per kind."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.counts = {"verify_invalid": 0, "verify_timeouts": 0}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def add(self, kind: str, detail: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            first = kind not in self._warned
            self._warned.add(kind)
        if first:
            warnings.warn(
                f"task {self.task!r}: {detail}; scored as a failure (counted as {kind})", stacklevel=3
            )
