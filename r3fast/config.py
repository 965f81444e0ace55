"""Configuration: one kw-only dataclass per component, loadable from YAML/TOML, overridable
from the command line as `--section.field value` (e.g. `--optim.lr 1e-6`).

Every value goes through one gate, `__post_init__`: it is coerced to the field's declared type
(r3fast.coerce: the same rules for YAML, TOML, flags and Python) and checked against its range,
so a bad value is a one-line `ConfigError` before anything heavy is imported or loaded. This
module imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from . import safe_yaml
from .coerce import coerce
from .config_base import FREE_ON_RESUME, RENAMED, _Section, as_written, depth, note, upgrade
from .config_loss import IS_ALIASES, RATIO_LEVELS, LossConfig
from .errors import ConfigError, UserError
from .prompts import REFLECT_PROMPT

# Re-exported here: the loss section (config_loss), the field metadata and old names (config_base).
__all__ = [
    "FREE_ON_RESUME",
    "IS_ALIASES",
    "RATIO_LEVELS",
    "RENAMED",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "R3Config",
    "RolloutConfig",
    "SamplerConfig",
    "TaskConfig",
    "TrainerConfig",
    "apply_overrides",
    "load_config",
    "may_change_on_resume",
    "upgrade",
]

REPORTERS = ("jsonl", "tensorboard", "wandb")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(kw_only=True)
class ModelConfig(_Section):
    """The policy model."""

    SECTION: ClassVar[str] = "model"
    name: str = "smollm2-135m-instruct"
    """Embedded model name, local save_pretrained directory, or HF hub id (`org/name` or `gpt2`)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Learner parameter dtype: the master weights, their gradients and the optimiser state."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Learner compute dtype: bfloat16 runs forward, span loss and backward under autocast while the
    weights, gradients and AdamW state stay in `dtype` (mixed precision); the sampler serves it."""
    device: str = field(default="auto", metadata=FREE_ON_RESUME)
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them."""
    lora: dict[str, Any] | None = None
    """LoRA adapters (peft), e.g. {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear};
    null trains every weight. The KL reference is then the same model with its adapters disabled."""
    load_in_4bit: bool = False
    """QLoRA: the frozen base quantised to 4-bit NF4 (bitsandbytes, CUDA only; needs lora)."""

    LORA_KEYS: ClassVar[dict[str, Any]] = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": "all-linear",
    }

    def _check(self) -> None:
        self._need("name", bool(self.name.strip()), "a model name or path")
        self._need("device", bool(_DEVICE.match(self.device)), "auto, cpu, mps, cuda or cuda:N")
        if self.lora is not None:
            self.lora = _lora_spec(self.lora)
        if self.load_in_4bit and self.lora is None:
            raise ConfigError("model.load_in_4bit trains through LoRA adapters: set model.lora too")


def _lora_spec(raw: dict[str, Any]) -> dict[str, Any]:
    """model.lora with every key present and checked (unknown keys, types, ranges)."""
    unknown = set(raw) - set(ModelConfig.LORA_KEYS)
    if unknown:
        raise ConfigError(
            f"model.lora: unknown key(s) {sorted(unknown)}; known: {list(ModelConfig.LORA_KEYS)}"
        )
    spec = {**ModelConfig.LORA_KEYS, **raw}
    spec["r"] = coerce(spec["r"], int, "model.lora.r")
    spec["alpha"] = coerce(spec["alpha"], float, "model.lora.alpha")
    spec["dropout"] = coerce(spec["dropout"], float, "model.lora.dropout")
    spec["target_modules"] = coerce(spec["target_modules"], str | list[str], "model.lora.target_modules")
    if spec["r"] < 1 or spec["alpha"] <= 0 or not 0 <= spec["dropout"] < 1:
        raise ConfigError(f"model.lora needs r >= 1, alpha > 0, dropout in [0, 1), got {raw}")
    return spec


@dataclass(kw_only=True)
class TaskConfig(_Section):
    """The task: a prompt builder, a binary verifier and a dataset."""

    SECTION: ClassVar[str] = "task"
    name: str = "countdown"
    """A built-in or entry-point task (r3fast.tasks.available_tasks()), `dataset` (a local file,
    r3fast.tasks.dataset), or an import path `my_pkg.tasks:make_task` (a factory or class)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for get_task (difficulty knobs, dataset paths)."""
    reflect_prompt: str = REFLECT_PROMPT
    """The user turn that asks for a reflection after a failed attempt (default: the paper's)."""
    verify_timeout: float = field(default=5.0, metadata=FREE_ON_RESUME)
    """Seconds one call of a user's verify (make_task) may take; a slower call is a failure and is
    counted as verify_timeouts in the metrics (0: no limit)."""

    def _check(self) -> None:
        self._need("reflect_prompt", bool(self.reflect_prompt.strip()), "a non-empty instruction")
        self._need("verify_timeout", 0 <= self.verify_timeout <= 3600, "in [0, 3600] seconds")
        self._need("options", depth(self.options) <= 8, "a mapping nested at most 8 levels deep")


@dataclass(kw_only=True)
class SamplerConfig(_Section):
    """Generation of first tries, reflections and retries."""

    SECTION: ClassVar[str] = "sampler"
    backend: Literal["hf", "vllm"] = "hf"
    """hf (transformers generate) | vllm (colocated vLLM)."""
    temperature: float = 0.9
    """Sampling temperature of reflections and retries (paper: ~0.9); also the loss's tau."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_answer_tokens: int = 64
    """Cap on first-try and retry answers, in tokens."""
    max_reflection_tokens: int = 128
    """Cap on a reflection, in tokens."""
    chunk_size: int = 64
    """Prompts handed to the sampler per call (progress granularity; HF batch = chunk x n)."""
    max_batch_size: int = field(default=64, metadata=FREE_ON_RESUME)
    """HF sampler: sequences generated together."""
    gpu_memory_utilization: float | str = field(default="auto", metadata=FREE_ON_RESUME)
    """vLLM: fraction of GPU memory, or auto (sized from the learner's measured peak)."""
    sync_bucket_mb: int = field(default=256, metadata=FREE_ON_RESUME)
    """vLLM: weight-sync bucket size, in MiB (0: one load_weights call per tensor)."""
    sleep_level: int = field(default=1, metadata=FREE_ON_RESUME)
    """vLLM (CUDA): 1 offloads weights to CPU while asleep; R3 generates twice per step between
    syncs (reflect, then retry), so level 2, which drops the weights, does not fit."""
    max_model_len: int = field(default=4096, metadata=FREE_ON_RESUME)
    """vLLM: longest prompt + completion, in tokens."""

    def _check(self) -> None:
        self._need("temperature", self.temperature > 0, "> 0 for training")
        self._need("top_p", 0 < self.top_p <= 1, "in (0, 1]")
        for name in ("max_answer_tokens", "max_reflection_tokens", "chunk_size", "max_batch_size"):
            self._need(name, getattr(self, name) >= 1, ">= 1")
        self._need("max_model_len", self.max_model_len >= 1, ">= 1")
        self._need("sync_bucket_mb", self.sync_bucket_mb >= 0, ">= 0")
        self._need("sleep_level", self.sleep_level in (1, 2), "1 or 2")
        g = self.gpu_memory_utilization
        self._need(
            "gpu_memory_utilization",
            g == "auto" or (isinstance(g, float) and 0 < g <= 1),
            "auto or in (0, 1]",
        )


@dataclass(kw_only=True)
class RolloutConfig(_Section):
    """Episodes: G reflections per failure, a retry after each, rewards to advantages, the sequences
    the learner gets (r3fast.rollout)."""

    SECTION: ClassVar[str] = "rollout"
    group_size: int = 8
    """G: reflections sampled per failure (paper: 8-14)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """TRL's scale_rewards: A = (r − mean_group)/(std + 1e-4) with the group's std (group: the paper's),
    the whole step's std (batch), or A = r − mean_group unscaled (none: Dr. GRPO)."""
    mask_truncated_completions: bool = False
    """TRL's name: reflections cut at sampler.max_reflection_tokens get no loss (they still count in
    their group's advantages), so a run is not rewarded for the first tokens of a cut-off sentence."""

    def _check(self) -> None:
        self._need("group_size", 2 <= self.group_size <= 512, "in [2, 512] (GRPO needs a group; paper: 8-14)")


@dataclass(kw_only=True)
class OptimConfig(_Section):
    """Optimiser and learning-rate schedule."""

    SECTION: ClassVar[str] = "optim"
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """adamw (torch) | adamw8bit (bitsandbytes)."""
    lr: float = 1e-6
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam moment coefficients."""
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear warm-up steps to the peak lr."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """After warm-up; linear and cosine decay to 0 at trainer.steps."""

    def _check(self) -> None:
        self._need("lr", self.lr > 0, "> 0")
        self._need("weight_decay", self.weight_decay >= 0, ">= 0")
        self._need("betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        self._need("grad_clip", self.grad_clip >= 0, ">= 0")
        self._need("warmup_steps", self.warmup_steps >= 0, ">= 0")


@dataclass(kw_only=True)
class DataConfig(_Section):
    """Where failures come from, and how rows are packed."""

    SECTION: ClassVar[str] = "data"
    failures: str | None = None
    """JSONL failure set from `r3fast mine`; unset: mine failures online during training."""
    online: bool | None = None
    """Mine failures from the task's train split during training. null (default): online exactly
    when data.failures is unset."""
    failures_per_step: int = 8
    """Failures rolled out per optimiser step (each gets group_size reflections)."""
    max_tokens: int = 4096
    """Token budget of one packed micro-batch row."""
    shared_prefix: bool = False
    """Store each group's shared prefix (task + failed attempt + reflection request) once per row and
    let its G reflections attend to it through a tree mask: saves (G-1)/G of the prefix tokens."""
    mine_tries: int = 4
    """Online mining: first attempts per example."""

    @property
    def mines_online(self) -> bool:
        return self.failures is None if self.online is None else self.online

    def _check(self) -> None:
        if self.online is True and self.failures is not None:
            raise ConfigError(
                "data.failures and data.online=true both given: pick one (data.online: null mines "
                "online exactly when no failures file is given)"
            )
        if self.online is False and self.failures is None:
            raise ConfigError("data.online=false needs data.failures (a JSONL file from `r3fast mine`)")
        for name in ("failures_per_step", "max_tokens", "mine_tries"):
            self._need(name, getattr(self, name) >= 1, ">= 1")
        self._need("failures_per_step", self.failures_per_step <= 4096, "<= 4096")


@dataclass(kw_only=True)
class TrainerConfig(_Section):
    """The loop: steps, checkpoints, evaluation, logging."""

    SECTION: ClassVar[str] = "trainer"
    steps: int = field(default=100, metadata=FREE_ON_RESUME)
    """Optimiser steps (rollout + update) to run; may be raised on --resume to extend a run."""
    seed: int = 0
    """Seed of sampling, data order and initial RNG state."""
    output_dir: str = field(default="runs/r3", metadata=FREE_ON_RESUME)
    """Run directory: metrics, checkpoints, final model, report."""
    save_every: int = field(default=50, metadata=FREE_ON_RESUME)
    """Checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = field(default=2, metadata=FREE_ON_RESUME)
    """Checkpoints kept on disk, newest by recorded step."""
    eval_n: int = 64
    """Held-out examples for the four-column report (0 skips evaluation)."""
    eval_temperatures: list[float] = field(default_factory=lambda: [0.0])
    """Decodings of the final report, each on the same examples (0 is greedy); the first is the
    headline (summary, r3_effect.json, periodic evaluation)."""
    eval_every: int = field(default=0, metadata=FREE_ON_RESUME)
    """Measure a small fixed held-out set every this many steps (0: never); logged and plotted."""
    eval_every_n: int = field(default=16, metadata=FREE_ON_RESUME)
    """Size of that periodic held-out set."""
    data_parallel: Literal["ddp", "fsdp2"] = "ddp"
    """Under torchrun (world size > 1): ddp replicates the learner; fsdp2 shards it (fully_shard)."""
    max_nonfinite_steps: int = field(default=3, metadata=FREE_ON_RESUME)
    """Stop after this many consecutive steps skipped for a non-finite loss or grad norm."""
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"], metadata=FREE_ON_RESUME)
    """Metric sinks: jsonl (always written) | tensorboard (extra r3fast[tensorboard]) | wandb."""
    wandb_project: str = field(default="r3fast", metadata=FREE_ON_RESUME)
    """W&B project (set WANDB_MODE=offline to log without a network)."""
    progress: bool = field(default=True, metadata=FREE_ON_RESUME)
    """Progress bars on a terminal; one line per update when output is redirected."""
    tensorboard: bool = field(default=True, metadata=FREE_ON_RESUME)
    """Shorthand: false drops tensorboard from report_to."""
    push_to_hub: str | None = field(default=None, metadata=FREE_ON_RESUME)
    """Hub repo id (org/name) to upload final/ (weights, tokenizer, model card) to after the run."""

    def _check(self) -> None:
        self._need("steps", self.steps >= 1, ">= 1")
        self._need("seed", 0 <= self.seed < 2**63, "in [0, 2**63)")
        self._need("output_dir", bool(self.output_dir.strip()) and "\0" not in self.output_dir,
                   "a directory path (no NUL byte)")  # fmt: skip
        for name in ("save_every", "eval_n", "eval_every"):
            self._need(name, getattr(self, name) >= 0, ">= 0")
        for name in ("keep_checkpoints", "eval_every_n", "max_nonfinite_steps"):
            self._need(name, getattr(self, name) >= 1, ">= 1")
        self._need("eval_temperatures", bool(self.eval_temperatures) and min(self.eval_temperatures) >= 0,
                   "a non-empty list of temperatures >= 0")  # fmt: skip
        self._need("report_to", set(self.report_to) <= set(REPORTERS), f"a list from {list(REPORTERS)}")

    @property
    def reporters(self) -> list[str]:
        """The sinks in use: jsonl always; tensorboard unless `tensorboard: false`."""
        out = ["jsonl"] + [r for r in self.report_to if r != "jsonl"]
        return [r for r in out if r != "tensorboard" or self.tensorboard]


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "task": TaskConfig,
    "sampler": SamplerConfig,
    "loss": LossConfig,
    "rollout": RolloutConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
}


@dataclass(kw_only=True)
class R3Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

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
    except ConfigError as e:
        raise as_written(e, used) from None
    return config
