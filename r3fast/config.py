"""Configuration: one kw-only section per component, loadable from YAML/TOML, overridable from the
command line as `--section.field value` (e.g. `--optim.lr 1e-6`).

    section      what it configures                  built by                             file
    model        the policy and its KL reference      policy.build_policy / build_reference  config_sections
    task         prompts, verifier, data              validate.build_configured_task
    sampler      HF generate or colocated vLLM        sampling.build_sampler
    rollout      episodes -> sequences, advantages    rollout.rollout
    loss         the GRPO span loss                   loss.SpanLoss.from_config             config_loss
    learner      μ, IS correction, grad clip          learner.Learner.from_config           config_learner
    optim        AdamW, lr schedule                   optim.build_optimizer / build_scheduler  config_sections
    data         failures, packing                    failures.FailureSource.from_config
    checkpoint   how often, how many kept             checkpoint.save_checkpoint            config_loop
    eval         held-out protocol (train and eval)   evaluate.evaluate_as_trained
    metrics      sinks, progress display              metrics.MetricsLogger
    trainer      the loop: steps, seed, run dir, DP   trainer.R3Trainer

Every value goes through one gate, `__post_init__`: it is coerced to the field's declared type
(r3fast.coerce: the same rules for YAML, TOML, flags and Python) and checked against its range, so a
bad value is a one-line `ConfigError` before anything heavy is imported or loaded. Each field carries
its doc (the string under it: --help, the README) and metadata (FREE_ON_RESUME: the resume check);
fields that moved keep their old names (config_base.RENAMED). This module imports neither torch nor
transformers.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import safe_yaml
from .coerce import coerce
from .config_base import FREE_ON_RESUME, RENAMED, as_written, depth, note, upgrade
from .config_learner import IS_ALIASES, LearnerConfig
from .config_loop import REPORTERS, CheckpointConfig, EvalConfig, MetricsConfig, TrainerConfig
from .config_loss import RATIO_LEVELS, LossConfig
from .config_sections import DataConfig, ModelConfig, OptimConfig, RolloutConfig, SamplerConfig, TaskConfig
from .errors import ConfigError, UserError

# Re-exported here: every section, the field metadata and the old names.
__all__ = [
    "FREE_ON_RESUME",
    "IS_ALIASES",
    "RATIO_LEVELS",
    "RENAMED",
    "REPORTERS",
    "SECTIONS",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "LearnerConfig",
    "LossConfig",
    "MetricsConfig",
    "ModelConfig",
    "OptimConfig",
    "R3Config",
    "RolloutConfig",
    "SamplerConfig",
    "TaskConfig",
    "TrainerConfig",
    "apply_overrides",
    "depth",
    "load_config",
    "may_change_on_resume",
    "upgrade",
]


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "task": TaskConfig,
    "sampler": SamplerConfig,
    "rollout": RolloutConfig,
    "loss": LossConfig,
    "learner": LearnerConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
    "metrics": MetricsConfig,
    "trainer": TrainerConfig,
}


@dataclass(kw_only=True)
class R3Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        self.check_across()

    def check_across(self) -> None:
        """Rules between sections (each section checks its own fields)."""
        if self.loss.loss_type == "vespo" and self.learner.is_correction.startswith("sequence"):
            raise ConfigError(
                f"learner.is_correction={self.learner.is_correction!r}: vespo takes only token_truncate "
                "or token_mask (its weight folds in per-token ratios, as in TRL)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`{"section.field": value}` for every field (diffs, help)."""
        return {f"{s}.{k}": v for s, fields in self.to_dict().items() for k, v in fields.items()}

    @property
    def deprecations(self) -> list[str]:
        """One note per old field name this config was read with (see RENAMED)."""
        return self.__dict__.setdefault("_deprecations", [])

    @classmethod
    def from_dict(cls, raw: dict) -> R3Config:
        raw, used = upgrade(raw)
        try:
            cfg = cls._from_upgraded(raw)
        except ConfigError as e:
            raise as_written(e, used) from None
        cfg.deprecations.extend(note(old, new) for old, new in used.items())
        return cfg

    @classmethod
    def _from_upgraded(cls, raw: dict) -> R3Config:
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {list(SECTIONS)}")
        parts = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table of fields, got {values!r}")
            bad = set(values) - set(_names(section_cls))
            if bad:
                raise ConfigError(f"unknown field(s) {sorted(bad)} in [{name}]; known: {_names(section_cls)}")
            parts[name] = section_cls(**values)
        return cls(**parts)


def may_change_on_resume() -> frozenset[str]:
    """`section.field` of every field marked FREE_ON_RESUME (read by the resume check and --help)."""
    return frozenset(
        f"{name}.{f.name}"
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("resume") == "free"
    )


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def load_config(path: str | Path) -> R3Config:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file with one table per section."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path}: not UTF-8 (byte offset {e.start})") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        else:
            raw = safe_yaml.load(text)
    except Exception as e:  # TOMLDecodeError / YAMLError: the parser's message, on one line
        raise UserError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {_one_line(e)}"
        ) from None
    if not raw:
        raise ConfigError(f"{path}: the config is empty; give at least one section (trainer: {{steps: 10}})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return R3Config.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse_flag_value(text: str, hint: Any) -> Any:
    """Flags are text: read them as YAML scalars (1e-6, true, null, [a, b]) unless the field is
    plain text, which is taken verbatim (`--trainer.output_dir 007`)."""
    if hint is str or typing.get_origin(hint) is Literal:
        return text
    try:
        value = safe_yaml.load(text)
    except yaml.YAMLError:
        return text
    if hint == (str | None):
        return None if value is None else text
    return value


def split_overrides(args: list[str]) -> list[tuple[str, str]]:
    """`--section.field value` / `--section.field=value` pairs, in order."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise UserError(f"expected --section.field value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"{arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


def apply_overrides(config: R3Config, args: list[str]) -> R3Config:
    """Apply `--section.field value` pairs; unknown keys and bad values raise `ConfigError`.
    Every value is set first and the touched sections are checked once after, so a pair of
    flags that only make sense together (data.failures + data.online) can be given in any order."""
    touched, used = {}, {}
    try:
        for key, text in split_overrides(args):
            if key in RENAMED:
                used[key] = RENAMED[key]
                config.deprecations.append(note(key, RENAMED[key]))
                key = RENAMED[key]
            section_name, _, name = key.partition(".")
            if section_name not in SECTIONS:
                raise ConfigError(f"--{key}: unknown section {section_name!r}; known: {list(SECTIONS)}")
            section = getattr(config, section_name)
            hints = typing.get_type_hints(type(section))
            if name not in hints or name == "SECTION":
                raise ConfigError(f"--{key}: unknown field; [{section_name}] has {_names(type(section))}")
            setattr(section, name, coerce(_parse_flag_value(text, hints[name]), hints[name], f"--{key}"))
            touched[section_name] = section
        for section in touched.values():
            section.__post_init__()
        config.check_across()
    except ConfigError as e:
        raise as_written(e, used) from None
    return config
