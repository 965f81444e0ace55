"""The run-input sections: `[model]`, `[task]`, `[sampler]`, `[rollout]`, `[optim]`, `[data]` (no torch).

Each is a kw-only dataclass whose `__post_init__` (config_base._Section) coerces every field to its
type and checks its range, so a bad value is a one-line `ConfigError` before anything loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .coerce import coerce
from .config_base import FREE_ON_RESUME, _Section, depth
from .errors import ConfigError
from .prompts import REFLECT_PROMPT

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "RolloutConfig", "SamplerConfig", "TaskConfig"]

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
    share_prefix: bool = field(default=True, metadata=FREE_ON_RESUME)
    """HF sampler: prefill a prompt prefix shared by several sequences once (vLLM caches prefixes
    itself)."""
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
    warmup_steps: int = 0
    """Linear warm-up steps to the peak lr."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """After warm-up; linear and cosine decay to 0 at trainer.steps."""

    def _check(self) -> None:
        self._need("lr", self.lr > 0, "> 0")
        self._need("weight_decay", self.weight_decay >= 0, ">= 0")
        self._need("betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
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
