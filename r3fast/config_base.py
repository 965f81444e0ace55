"""The base of every config section, its field metadata, and the old field names (no torch).

`_Section.__post_init__` is the one gate every value goes through: coerced to the field's declared
type (r3fast.coerce), then the section's `_check` of ranges. A field's metadata says what else
reads it (FREE_ON_RESUME: the resume check and --help); RENAMED maps a moved field's old name to
its new one for config files, flags and saved runs.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, ClassVar

from .coerce import coerce
from .errors import ConfigError

__all__ = ["FREE_ON_RESUME", "RENAMED", "as_written", "depth", "note", "upgrade"]

# Field metadata: a field a resumed run may change freely (its length, bookkeeping, logging, the
# machine). Every other field changes what the run computes (data, sampling, loss, optimiser, seed,
# evaluation set); `--resume` refuses a change of one unless --allow-config-change (r3fast.rundir).
FREE_ON_RESUME = {"resume": "free"}


class _Section:
    """Coerce every field to its type, then let the subclass check ranges (`_check`)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self.SECTION}.{f.name}"
            setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], key))
        self._check()

    def _check(self) -> None:
        pass

    def _need(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{self.SECTION}.{name} must be {what}, got {getattr(self, name)!r}")


# Old names of fields that moved to the section of the component that uses them: still read (config
# files, flags, saved runs), each with a one-line note (`R3Config.deprecations`, printed by the CLI).
RENAMED = {
    "sampler.group_size": "rollout.group_size",
    "loss.mask_truncated_completions": "rollout.mask_truncated_completions",
    "loss.num_iterations": "learner.num_iterations",
    "loss.is_correction": "learner.is_correction",
    "loss.is_clip_min": "learner.is_clip_min",
    "loss.is_clip_max": "learner.is_clip_max",
    "optim.grad_clip": "learner.grad_clip",
    "trainer.save_every": "checkpoint.every",
    "trainer.keep_checkpoints": "checkpoint.keep",
    "trainer.eval_n": "eval.n",
    "trainer.eval_temperatures": "eval.temperatures",
    "trainer.eval_every": "eval.every",
    "trainer.eval_every_n": "eval.every_n",
    "trainer.report_to": "metrics.report_to",
    "trainer.wandb_project": "metrics.wandb_project",
    "trainer.progress": "metrics.progress",
    "trainer.tensorboard": "metrics.tensorboard",
}


def note(old: str, new: str) -> str:
    return f"note: {old} is now {new} (the old name still works; rename it in your config)"


def upgrade(raw: dict) -> tuple[dict, dict[str, str]]:
    """A mapping of sections with every old field name (RENAMED) moved to its new place, and the
    old names found (old -> new). Giving an old name and its new name together is an error."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    used = {}
    for old, new in RENAMED.items():
        (src, name), (dst, new_name) = old.split("."), new.split(".")
        section = out.get(src)
        if not isinstance(section, dict) or name not in section:
            continue
        target = out.get(dst) or {}
        if not isinstance(target, dict):
            continue  # from_dict names the bad section
        if new_name in target:
            raise ConfigError(f"{old} and {new} both given: {old} is the old name of {new}; keep {new}")
        target[new_name] = section.pop(name)
        out[dst] = target
        used[old] = new
    return out, used


def as_written(e: ConfigError, used: dict[str, str]) -> ConfigError:
    """The error naming the field as the user wrote it (an old name stays the old name)."""
    text = str(e)
    for old, new in used.items():  # whole names only: eval.every is not a part of eval.every_n
        text = re.sub(rf"(?<![\w.]){re.escape(new)}(?!\w)", old, text)
    return ConfigError(text)


def depth(value: Any, limit: int = 64) -> int:
    """Nesting depth of dicts/lists, counted iteratively (no RecursionError), capped at `limit`."""
    todo, deepest = [(value, 0)], 0
    while todo:
        v, d = todo.pop()
        deepest = max(deepest, d)
        if d < limit and isinstance(v, (dict, list, tuple)):
            todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest
