"""`VLLMSampler`: the Sampler contract on a vLLM engine colocated with the learner (one process).

The caller owns the memory phases; `generate` and `prompt_logprobs` never wake or sleep (they
raise while asleep). A training step on CUDA (sleep mode on), as the trainer runs it:

    sampler.wake()             weights back on the GPU, KV cache re-allocated
    sampler.generate(...)      every chunk of the rollout, no phase change between them
    sampler.sleep()            KV dropped, weights offloaded (level 1) or dropped (level 2)
    learner step               the GPU is the learner's
    sampler.sync_weights(m)    wake weights -> stream m's tensors in buckets -> reset prefix cache
                               -> wake KV cache (it leaves the engine awake: a rollout comes next)

A new sampler starts asleep. On CPU vLLM has no sleep mode: `sleep_enabled` is False there and
`sleep`/`wake` do nothing, by design, not by accident. Log-probs are vLLM's "processed" ones:
log_softmax(logits / T) of the sampled token when top_p = 1 (the `Completion` contract); with
top_p < 1 vLLM renormalises them over the nucleus, which differs by log(nucleus mass). Prompts
are token ids; vLLM never tokenises.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..lora import merged_weights  # HF names, tied weights once; LoRA adapters merged in
from ..models import load_tokenizer, resolve_model_path
from . import memory
from . import vllm_compat as compat
from .base import Completion, SamplingParams

__all__ = ["SyncStats", "VLLMSampler", "iter_buckets"]

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True, kw_only=True)
class SyncStats:
    seconds: float
    """Wall time of the whole sync (wake, load, reset, wake), seconds."""
    bytes: int
    """Tensor bytes handed to vLLM."""
    load_calls: int
    """`load_weights` calls made (one per bucket)."""


def iter_buckets(
    tensors: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) into lists of at most `bucket_bytes` (a larger tensor goes alone).

    Tensors are cast/moved to vLLM's dtype and device one at a time, so a sync holds at most one
    bucket of converted copies; when they already match, nothing is copied here at all
    (`load_weights` copies into vLLM's own storage). `bucket_bytes=0` gives one tensor per bucket.
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in tensors:
        t = t.detach().to(device=device, dtype=dtype)
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


class VLLMSampler:
    def __init__(
        self,
        model: str | os.PathLike,
        *,
        dtype: str | torch.dtype = "auto",
        gpu_memory_utilization: float | str = "auto",
        learner_bytes: int | None = None,
        memory_margin_bytes: int = memory.DEFAULT_MARGIN_BYTES,
        enable_sleep: bool = True,
        sleep_level: int = 1,
        sync_bucket_mb: float = 256,
        seed: int = 0,
        max_model_len: int = 4096,
        enforce_eager: bool | None = None,
        cpu_kv_cache_gb: float = 1.0,
        cpu_threads: int | None = None,
    ) -> None:
        """
        model: embedded name (e.g. "smollm2-135m-instruct"), local HF directory or hub id.
        dtype: vLLM's weight dtype; match the learner's ("auto": the checkpoint's).
        gpu_memory_utilization: vLLM's share of the GPU; "auto" sizes it from `learner_bytes`
            (default: torch.cuda.max_memory_reserved() now, so build after a learner warm-up step).
        enable_sleep: CUDA only; let `sleep()` free the GPU for the learner between rollouts.
        sleep_level: 1 offloads weights to CPU; 2 drops them, so a sync must come between a
            sleep and the next generate (the trainer syncs after every step, so either works).
        sync_bucket_mb: bytes per load_weights call during sync_weights, MiB.
        enforce_eager: None = eager on CPU (torch.compile start-up ~2 min there), graphs on CUDA.
        cpu_kv_cache_gb: KV cache size when vLLM runs on CPU, GiB.
        cpu_threads: on CPU, torch threads while vLLM works (the learner's count is restored
            after each call); None keeps the caller's. On a busy 2-core box 1 thread decoded
            ~4x faster than 2 (OpenMP barriers spin against other processes).
        """
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        if sync_bucket_mb < 0:
            raise ValueError(f"sync_bucket_mb must be >= 0, got {sync_bucket_mb}")
        compat.import_vllm()  # raises VLLMUnavailableError with the reason
        cpu = compat.is_cpu()
        path = resolve_model_path(model)
        dtype_name = str(dtype).removeprefix("torch.")
        if cpu:  # vLLM ignores the fraction on CPU (KV space is cpu_kv_cache_gb); still validate it
            utilization = (
                0.9
                if gpu_memory_utilization == "auto"
                else self._gpu_utilization(path, gpu_memory_utilization, None, 0, dtype_name, max_model_len)
            )
        else:
            utilization = self._gpu_utilization(
                path, gpu_memory_utilization, learner_bytes, memory_margin_bytes, dtype_name, max_model_len
            )
        self.sleep_enabled = enable_sleep and not cpu
        """True when sleep()/wake() really free/restore memory (CUDA and enable_sleep)."""
        self.sleep_level = sleep_level
        self.sync_bucket_mb = sync_bucket_mb
        self.cpu_threads = cpu_threads if cpu else None
        self.gpu_memory_utilization = utilization
        self.llm = compat.create_llm(
            path,
            dtype=dtype_name,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=utilization,
            enable_sleep_mode=self.sleep_enabled,
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            cpu_kv_cache_bytes=int(cpu_kv_cache_gb * memory.GIB),
        )
        self.tokenizer = load_tokenizer(path)  # the same decode as HFSampler
        self.device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
        self.dtype = compat.model_dtype(self.llm)
        self._param_names = compat.param_names(self.llm)
        self._asleep: set[str] = set()  # subset of {"weights", "kv_cache"}
        self._weights_dropped = False  # level-2 sleep since the last sync
        self.last_sync: SyncStats | None = None
        self.sleep()  # the learner may be built next; the first rollout's wake() brings it back

    @staticmethod
    def _gpu_utilization(
        path: str,
        requested: float | str,
        learner_bytes: int | None,
        margin: int,
        dtype_name: str,
        max_model_len: int,
    ) -> float:
        if not isinstance(requested, str):
            return memory.resolve_gpu_memory_utilization(
                requested, total_bytes=1, learner_bytes=0, min_vllm_bytes=0
            )
        if learner_bytes is None:
            learner_bytes = torch.cuda.max_memory_reserved()
        weight_bytes, kv_per_token = _checkpoint_sizes(path, dtype_name)
        return memory.resolve_gpu_memory_utilization(
            requested,
            total_bytes=torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory,
            learner_bytes=learner_bytes,
            min_vllm_bytes=memory.vllm_min_bytes(
                weight_bytes=weight_bytes, kv_bytes_per_token=kv_per_token, max_model_len=max_model_len
            ),
            margin_bytes=margin,
        )

    # ---- Sampler protocol ----

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if not prompts:
            return []
        if params.top_p < 1:
            warnings.warn(
                "VLLMSampler: with top_p < 1 the returned log-probs are renormalised over the "
                "nucleus (vLLM processed_logprobs), not log_softmax(logits / T)",
                stacklevel=2,
            )
        self._check_awake()
        with self._threads():
            return compat.generate(self.llm, prompts, params, self.tokenizer)

    def sync_weights(self, model: torch.nn.Module, *, bucket_mb: float | None = None) -> SyncStats:
        """Copy `model`'s parameters into vLLM; `bucket_mb=0` is the one-call-per-tensor mode."""
        bucket_bytes = int((self.sync_bucket_mb if bucket_mb is None else bucket_mb) * (1 << 20))
        start = time.perf_counter()
        self._wake({"weights"})
        loaded: set[str] = set()
        nbytes = calls = 0
        with self._threads():  # CPU: re-packing the weights for oneDNN is part of the sync
            compat.begin_weight_update(self.llm)
            try:
                for bucket in iter_buckets(
                    merged_weights(model), bucket_bytes, dtype=self.dtype, device=self.device
                ):
                    loaded |= compat.load_weights(self.llm, bucket)
                    nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
                    calls += 1
            finally:
                compat.finish_weight_update(self.llm)  # also restores layers an error left unloaded
        missing = self._param_names - loaded
        if missing:
            raise RuntimeError(
                f"sync_weights: {len(missing)} vLLM parameters got no learner tensor, e.g. "
                f"{sorted(missing)[:5]}; is {type(model).__name__} the model vLLM serves?"
            )
        self._weights_dropped = False
        compat.reset_prefix_cache(self.llm)  # cached KV was computed with the old weights
        self._wake({"kv_cache"})
        self.last_sync = SyncStats(seconds=time.perf_counter() - start, bytes=nbytes, load_calls=calls)
        return self.last_sync

    def sleep(self) -> None:
        if not self.sleep_enabled or self._asleep == {"weights", "kv_cache"}:
            return
        compat.sleep(self.llm, self.sleep_level)
        self._asleep = {"weights", "kv_cache"}
        self._weights_dropped = self.sleep_level == 2

    def wake(self) -> None:
        self._wake({"weights", "kv_cache"})

    # ---- extras ----

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p(x_t | x_<t), t >= 1, of whole sequences under vLLM's current weights (temperature 1)."""
        self._check_awake()
        with self._threads():
            return compat.prompt_logprobs(self.llm, sequences)

    def _wake(self, tags: set[str]) -> None:
        todo = sorted(tags & self._asleep)
        if todo:
            compat.wake_up(self.llm, todo)
            self._asleep -= set(todo)

    @contextmanager
    def _threads(self) -> Iterator[None]:
        if self.cpu_threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _check_awake(self) -> None:
        if self._weights_dropped:
            raise RuntimeError(
                "sleep_level=2 dropped vLLM's weights; call sync_weights(model) before generating"
            )
        if self._asleep:  # the caller owns wake/sleep: a sleeping engine is its bug, not ours to fix
            raise RuntimeError(f"VLLMSampler is asleep ({sorted(self._asleep)}); call wake() first")


def _checkpoint_sizes(path: str, dtype_name: str) -> tuple[int, int]:
    """(weight bytes in vLLM's dtype, KV bytes per token) from a local HF checkpoint's headers."""
    root = Path(path)
    if not (root / "config.json").is_file():
        warnings.warn(
            f"{path} is not a local directory: 'auto' memory sizing ignores its weight size", stacklevel=3
        )
        return 0, 0
    from safetensors import safe_open

    config = json.loads((root / "config.json").read_text())
    if dtype_name == "auto":
        dtype_name = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    dtype_bytes = _DTYPE_BYTES[dtype_name]
    numel = 0
    for f in root.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                numel += math.prod(shape)
    heads = config["num_attention_heads"]
    kv = memory.kv_cache_bytes_per_token(
        num_layers=config["num_hidden_layers"],
        num_kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        dtype_bytes=dtype_bytes,
    )
    return numel * dtype_bytes, kv
