"""Atomic, resumable checkpoints: model, optimiser, scheduler, RNG, trainer state.

A checkpoint is written to a temp directory and renamed into place, then `latest` is replaced
(also by rename): a crash at any moment leaves the previous checkpoint intact and findable.
A transformers model is written with `save_pretrained` (plus the tokenizer when given), so
`from_pretrained(<run>/checkpoints/step_N)` and `r3fast eval --model <that dir>` load it; a LoRA
run's checkpoint holds the adapter (peft's `AutoPeftModelForCausalLM` and `r3fast eval` load it).
Pruning keeps the newest checkpoints by the step each one recorded, never by directory name.

Nothing in a checkpoint can run code: `state.pt` holds only tensors, numbers, strings, lists
and dicts (RNG states converted to those) and is read with `torch.load(weights_only=True)`; the
weights are safetensors; and every file is checked against the digests in `trainer_state.json`
(r3fast.ckpt_verify) before anything is loaded.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_model

from .atomic import atomic_dir, write_text_atomic
from .ckpt_verify import check_checkpoint, seal
from .errors import UserError
from .lora import is_lora
from .rundir import latest_checkpoint

__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "point_latest",
    "prune_checkpoints",
    "read_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_beside_weights",
]


def rng_state() -> dict[str, Any]:
    """Plain lists and tensors only, so `weights_only=True` can read them back."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    tokenizer: Any = None,
    keep: int = 2,
    model_card: str | None = None,
) -> Path:
    """Write `run_dir/checkpoints/step_XXXXXXXX` atomically, point `latest` at it, prune old ones."""
    ckpt_root = Path(run_dir) / "checkpoints"
    dest = ckpt_root / f"step_{step:08d}"
    with atomic_dir(dest) as tmp:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)  # config.json + safetensors; tied embeddings stored once
        else:
            save_model(model, str(tmp / "model.safetensors"))
        states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        write_beside_weights(tmp, step, states, trainer_state, tokenizer=tokenizer, model_card=model_card)
    point_latest(ckpt_root, dest, keep)
    return dest


def write_beside_weights(
    tmp: Path,
    step: int,
    state: dict,
    trainer_state: dict,
    *,
    tokenizer: Any = None,
    model_card: str | None = None,
) -> None:
    """Everything of a checkpoint but the weights, into its temporary dir: the tokenizer, the model
    card (README.md: what these weights are, r3fast.model_card), `state` + the RNG in state.pt, and
    last trainer_state.json with the digests of everything above, and of itself."""
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if model_card is not None:
        (tmp / "README.md").write_text(model_card, encoding="utf-8")
    torch.save({**state, "rng": rng_state()}, tmp / "state.pt")
    sealed = seal({"step": step, **trainer_state}, tmp)
    (tmp / "trainer_state.json").write_text(json.dumps(sealed, indent=1))


def point_latest(ckpt_root: Path, dest: Path, keep: int) -> None:
    """`latest` names the new checkpoint (atomically), then old ones are pruned to `keep`."""
    write_text_atomic(ckpt_root / "latest", dest.name)
    prune_checkpoints(ckpt_root, current=dest, keep=keep)


def _recorded_step(path: Path) -> int | None:
    try:
        return int(json.loads((path / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a checkpoint of ours: leave it alone


def prune_checkpoints(ckpt_root: Path, *, current: Path, keep: int) -> list[Path]:
    """Keep `current` and the `keep - 1` highest recorded steps below it. Checkpoints recording a
    later step than `current` belong to an abandoned future (a resume from an earlier step) and go."""
    now = _recorded_step(current)
    found = [(s, p) for p in ckpt_root.glob("step_*") if p.is_dir() and (s := _recorded_step(p)) is not None]
    older = sorted((sp for sp in found if sp[1] != current and sp[0] < now), reverse=True)
    doomed = [p for s, p in found if p != current and s >= now] + [p for _, p in older[keep - 1 :]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    if is_lora(model):  # a LoRA run saves (and resumes) its adapters; the frozen base reloads from its name
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        if res.unexpected_keys:
            raise RuntimeError(f"{path}: adapter does not match the model (unexpected {res.unexpected_keys})")
        return
    state = {}
    for f in sorted(path.glob("*.safetensors")):  # one file, or save_pretrained's shards
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not _is_tied(model, k)]:
        raise RuntimeError(
            f"{path}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
        )


def read_state(path: Path, *, check: bool = True) -> dict[str, Any]:
    """state.pt of a checkpoint (optimiser, schedule, RNG), after checking every file's digest
    (`check=False`: the caller has, e.g. rank 0 for all); `UserError` if corrupt or not plain data."""
    why = check_checkpoint(path, path.parent.parent) if check else None
    if why is not None:
        raise UserError(f"checkpoint {path}: {why}")
    try:  # digests match, but a hand-made checkpoint may still hold pickled code: refused
        return torch.load(path / "state.pt", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path}: state.pt is not plain tensors and numbers ({type(e).__name__}), "
                        "cannot be loaded safely") from None  # fmt: skip


def load_checkpoint(
    path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote, after checking it (`UserError` if corrupt);
    returns the trainer state (with `step`)."""
    path = Path(path)
    state = read_state(path)
    _load_weights(model, path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied
