"""Configuration: one kw-only dataclass per component, loadable from YAML/TOML, overridable
from the command line as `--section.field value` (e.g. `--optim.lr 1e-6`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "R3Config",
    "SamplerConfig",
    "TaskConfig",
    "TrainerConfig",
    "apply_overrides",
    "load_config",
]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Embedded model name, local save_pretrained directory, or HF hub id."""
    dtype: str = "float32"
    """Learner parameter dtype: float32 | bfloat16 | float16."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass(kw_only=True)
class TaskConfig:
    name: str = "countdown"
    """A registered task (r3fast.tasks.available_tasks())."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for get_task (difficulty knobs, dataset paths)."""


@dataclass(kw_only=True)
class SamplerConfig:
    backend: str = "hf"
    """hf (transformers generate) | vllm (colocated vLLM)."""
    group_size: int = 8
    """G: reflections sampled per failure (paper: 8-14)."""
    temperature: float = 0.9
    """Sampling temperature of reflections and retries (paper: ~0.9); also the loss's tau."""
    top_p: float = 1.0
    max_answer_tokens: int = 64
    """Cap on first-try and retry answers, in tokens."""
    max_reflection_tokens: int = 128
    """Cap on a reflection, in tokens."""
    chunk_size: int = 64
    """Prompts handed to the sampler per call (progress granularity; HF batch = chunk x n)."""
    max_batch_size: int = 64
    """HF sampler: sequences generated together."""
    gpu_memory_utilization: float | str = "auto"
    """vLLM: fraction of GPU memory, or auto (sized from the learner's measured peak)."""
    sync_bucket_mb: int = 256
    """vLLM: weight-sync bucket size, in MiB (0: one load_weights call per tensor)."""
    sleep_level: int = 1
    """vLLM (CUDA): 1 offloads weights to CPU while asleep; R3 generates twice per step between
    syncs (reflect, then retry), so level 2, which drops the weights, does not fit."""
    max_model_len: int = 4096
    """vLLM: longest prompt + completion, in tokens."""

    def __post_init__(self) -> None:
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"sampler.backend must be 'hf' or 'vllm', got {self.backend!r}")
        if self.group_size < 2:
            raise ValueError(f"sampler.group_size must be >= 2 (GRPO needs a group), got {self.group_size}")
        if self.temperature <= 0:
            raise ValueError(f"sampler.temperature must be > 0 for training, got {self.temperature}")


@dataclass(kw_only=True)
class LossConfig:
    loss_type: str = "dapo"
    """grpo | bnpo | dr_grpo | dapo (TRL's normalisations)."""
    beta: float = 0.001
    """k3 KL coefficient to the frozen reference model (paper: 0.001); 0 loads no reference."""
    eps_low: float = 0.2
    eps_high: float = 0.2
    impl: str = "auto"
    """Span-loss implementation: auto | triton | torch."""

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.beta < 0:
            raise ValueError(f"loss.beta must be >= 0, got {self.beta}")


@dataclass(kw_only=True)
class OptimConfig:
    optimizer: str = "adamw"
    """adamw (torch) | adamw8bit (bitsandbytes)."""
    lr: float = 1e-6
    """Peak learning rate."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping."""
    warmup_steps: int = 0
    schedule: str = "constant"
    """constant | linear | cosine (after warm-up, decaying to 0 at trainer.steps)."""

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"optim.optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"optim.schedule must be constant, linear or cosine, got {self.schedule!r}")
        self.betas = tuple(self.betas)


@dataclass(kw_only=True)
class DataConfig:
    failures: str | None = None
    """JSONL failure set from `r3fast mine`; None with online=True mines during training."""
    online: bool = False
    """Mine failures from the task's train split during training instead of reading a file."""
    failures_per_step: int = 8
    """Failures rolled out per optimiser step (each gets group_size reflections)."""
    max_tokens: int = 4096
    """Token budget of one packed micro-batch row."""
    shared_prefix: bool = False
    """Store each group's shared prefix (task + failed attempt + reflection request) once per row and
    let its G reflections attend to it through a tree mask: saves (G-1)/G of the prefix tokens."""
    mine_tries: int = 4
    """Online mining: first attempts per example."""


@dataclass(kw_only=True)
class TrainerConfig:
    steps: int = 100
    """Optimiser steps (rollout + update) to run."""
    seed: int = 0
    output_dir: str = "runs/r3"
    save_every: int = 50
    """Checkpoint every this many steps (0: only at the end)."""
    eval_n: int = 64
    """Held-out examples for the four-column report (0 skips evaluation)."""
    eval_temperature: float = 0.0
    """0 is greedy: a deterministic report."""
    progress: bool = True
    """Progress bars."""
    tensorboard: bool = True
    """Also log to TensorBoard when it is installed."""


@dataclass(kw_only=True)
class R3Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> R3Config:
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: {_names(cls)}")
        parts = {}
        for f in dataclasses.fields(cls):
            section_cls = _hints(cls)[f.name]
            values = raw.get(f.name) or {}
            bad = set(values) - set(_names(section_cls))
            if bad:
                raise ValueError(
                    f"unknown field(s) {sorted(bad)} in [{f.name}]; known: {_names(section_cls)}"
                )
            parts[f.name] = section_cls(**values)
        return cls(**parts)


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def load_config(path: str | Path) -> R3Config:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file with one table per section."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        raw = tomllib.loads(text)
    else:
        raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return R3Config.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _coerce(text: str, hint: Any, key: str) -> Any:
    value = yaml.safe_load(text)  # YAML scalars: 1e-6, true, null, [1, 2], {a: 1}
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return None
        if opt is float and not isinstance(value, bool):
            try:  # YAML 1.1 reads "1e-6" as a string
                return float(value if isinstance(value, (int, float)) else text)
            except (TypeError, ValueError):
                pass
        if opt is str and value is not None:
            return text if not isinstance(value, str) else value
        base = typing.get_origin(opt) or opt
        if base is tuple and isinstance(value, list):
            return tuple(value)
        if (
            isinstance(base, type)
            and isinstance(value, base)
            and not (base is int and isinstance(value, bool))
        ):
            return value
    raise ValueError(f"--{key}: cannot read {text!r} as {hint}")


def apply_overrides(config: R3Config, args: list[str]) -> R3Config:
    """Apply `--section.field value` (or `--section.field=value`) pairs; unknown keys raise."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ValueError(f"expected --section.field value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 2
        pairs.append((key, value))
    for key, value in pairs:
        section_name, _, name = key.partition(".")
        section = getattr(config, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise ValueError(f"--{key}: unknown section {section_name!r}; known: {_names(R3Config)}")
        hints = _hints(type(section))
        if name not in hints:
            raise ValueError(f"--{key}: unknown field; [{section_name}] has {_names(type(section))}")
        setattr(section, name, _coerce(value, hints[name], key))
        if hasattr(section, "__post_init__"):
            section.__post_init__()
    return config
