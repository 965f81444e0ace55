"""Sharded checkpoints of an FSDP2 run (torch.distributed.checkpoint): every rank writes its own
shards of the weights and AdamW moments, no rank gathers the model, and a later run loads them at
any number of processes, one included (DCP reshards by parameter name).

    step_N/dcp/            DCP: .metadata and one __R_0.distcp per writing rank
    step_N/config.json     the model's config; tokenizer files; README.md (model card)
    step_N/state.pt        schedule and RNG (plain tensors and numbers, read with weights_only)
    step_N/trainer_state.json   step, every rank's failure cursor, guard, config; the digests of
                                all files above, written last (r3fast.ckpt_verify)

Atomic like the whole-weights checkpoints (r3fast.checkpoint): every rank writes into one hidden
temp directory that rank 0 names, and rank 0 seals and renames it into place once every rank is
done; a crash leaves the previous checkpoint and `latest` as they were. Across nodes, output_dir
must be on a filesystem every node sees.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .atomic import publish_dir
from .checkpoint import point_latest, read_state, set_rng_state, write_beside_weights
from .ckpt_verify import check_checkpoint
from .distributed import Dist
from .errors import UserError

__all__ = ["gathered_state_dict", "is_sharded_checkpoint", "load_sharded", "save_sharded"]

DCP_DIR = "dcp"


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / DCP_DIR).is_dir()


def _model_and_optim(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Both state dicts keyed by parameter name (sharded DTensors under FSDP2, whole tensors else)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def save_sharded(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    dist: Dist,
    tokenizer: Any = None,
    keep: int = 2,
    model_card: str | None = None,
) -> Path:
    """Every rank calls it (the DCP write is collective); the checkpoint's path on every rank."""
    import torch.distributed.checkpoint as dcp

    root = Path(run_dir) / "checkpoints"
    dest = root / f"step_{step:08d}"
    tmp = None
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{dest.name}.tmp.", dir=root)
    tmp = Path(dist.broadcast(tmp))
    try:
        dcp.save(_model_and_optim(model, optimizer), checkpoint_id=str(tmp / DCP_DIR))
        dist.barrier()
        if dist.is_main:
            model.config.save_pretrained(tmp)
            write_beside_weights(tmp, step, {"scheduler": scheduler.state_dict()}, trainer_state,
                                 tokenizer=tokenizer, model_card=model_card)  # fmt: skip
            publish_dir(tmp, dest)
            point_latest(root, dest, keep)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    return dest


def load_sharded(
    path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, dist: Dist
) -> dict[str, Any]:
    """Restore what `save_sharded` wrote into `model` (sharded or whole) at this world size; rank 0
    checks every file's digest once for all. Returns the trainer state (with `step`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    why = dist.broadcast(check_checkpoint(path, path.parent.parent) if dist.is_main else None)
    if why is not None:
        raise UserError(f"checkpoint {path}: {why}")
    state = read_state(path, check=False)
    sd = _model_and_optim(model, optimizer)
    dcp.load(sd, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights on rank 0's CPU (empty elsewhere), gathered from the shards; collective.
    A tied weight is kept once, under its first name, as `save_pretrained` of the whole model does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            full.pop(name, None)
    return full
