"""Data parallelism on torch.distributed: the one owner of ranks, collectives and wrapping.

Launch with torchrun (multi-node through its rendezvous flags):

    torchrun --nproc-per-node 8 -m r3fast train --preset countdown-paper
    torchrun --nnodes 2 --node-rank $NODE --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $HOST:29500 -m r3fast train --preset countdown-paper

Each rank rolls out its own share of failures with its own colocated sampler; the learner's decoder
is wrapped in DDP (or sharded with FSDP2 `fully_shard`, `trainer.data_parallel: fsdp2`); the loss's
step-wide normalisers (span tokens, sequences, rows) are all-reduced before the first micro-batch,
and each rank's loss is scaled by the world size to undo DDP's gradient averaging, so K ranks
compute exactly the gradient of one rank holding all K shares. Rank 0 alone writes the run
directory. Without torchrun's environment everything here is a no-op (world size 1).
"""

from __future__ import annotations

import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError
from .model.lm import DecoderOnly, decoder_of, is_fsdp2

__all__ = ["Dist"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> Dist:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; starts the process group (nccl on CUDA, else gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(hours=2))  # rank 0 evaluates alone
        return cls(rank=rank, world=world, local_rank=local)

    @classmethod
    def for_loop(cls, device_type: str, mode: str) -> Dist:
        """`from_env`, for the training loop: fsdp2 is refused there under torchrun. Sharded weights would
        make every generated token a collective (ranks generate different lengths) and every checkpoint
        a gather; the learner shards (`wrap`), the loop not yet."""
        group = cls.from_env(device_type)
        if group.enabled and mode == "fsdp2":
            raise UserError(
                "trainer.data_parallel=fsdp2 is supported by r3fast.learner.Learner (Dist.wrap), not yet by "
                "the training loop, whose samplers and checkpoints need whole weights: use ddp"
            )
        return group

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per rank: cuda:LOCAL_RANK."""
        if self.enabled and requested.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return requested

    # ---- collectives (identity at world size 1) -------------------------------------------------

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def gather(self, obj):
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Tear the group down while the interpreter is fully alive. Drop every DDP / FSDP2 wrapper
        first: they hold the group, and a group (with its gloo worker threads and their pending
        work) freed only at interpreter exit aborts the process (SIGABRT, "terminate called without
        an active exception"; seen on CPU under load)."""
        if self.enabled and dist.is_initialized():
            dist.barrier()  # every rank's outstanding collectives done
            gc.collect()  # wrappers in reference cycles (module hooks) go now, not at exit
            dist.destroy_process_group()

    # ---- the learner's wrapper ------------------------------------------------------------------

    def wrap(self, lm: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
        """The module the learner's forward runs through: the LM itself at world size 1, else its
        decoder under DDP or FSDP2 (each decoder layer sharded, then the root)."""
        if not self.enabled:
            return lm
        module = DecoderOnly(lm)
        if mode == "ddp":
            ids = [device.index] if device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if mode == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(device.type, (self.world,))
            for layer in decoder_of(lm).layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(module, mesh=mesh)
            return module
        raise ValueError(f"trainer.data_parallel must be ddp or fsdp2, got {mode!r}")

    def no_sync(self, module: torch.nn.Module, last: bool):
        """DDP: sync gradients on the last micro-batch of a step only. FSDP2: reduce-scatter on the
        last only (set_requires_gradient_sync)."""
        if not self.enabled or last:
            if is_fsdp2(module):
                module.set_requires_gradient_sync(True)
            return nullcontext()
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module.no_sync()
        if is_fsdp2(module):
            module.set_requires_gradient_sync(False)
        return nullcontext()
