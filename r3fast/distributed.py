"""Data parallelism on torch.distributed: the one owner of ranks, collectives and wrapping.

Launch with torchrun (multi-node through its rendezvous flags):

    torchrun --nproc-per-node 8 -m r3fast train --preset countdown-paper
    torchrun --nnodes 2 --node-rank $NODE --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $HOST:29500 -m r3fast train --preset countdown-paper

Each rank rolls out its own share of failures with its own colocated sampler; the learner's decoder
is wrapped in DDP (or sharded with FSDP2 `fully_shard`, `trainer.data_parallel: fsdp2`: then each
rank's sampler generates from a whole-weights copy refreshed after every step, and checkpoints are
sharded, r3fast.checkpoint_sharded); the loss's
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
    def for_loop(cls, device_type: str, mode: str, *, lora: bool = False, load_in_4bit: bool = False) -> Dist:
        """`from_env`, for the training loop; refuses what FSDP2 sharding does not cover before anything
        loads: it shards a full fine-tune (LoRA's frozen base fits one device; use ddp there)."""
        group = cls.from_env(device_type)
        if group.enabled and mode == "fsdp2" and (lora or load_in_4bit):
            raise UserError(
                "trainer.data_parallel=fsdp2 shards a full fine-tune; with model.lora or model.load_in_4bit "
                "the frozen base is replicated anyway: use trainer.data_parallel=ddp"
            )
        return group

    def shards(self, mode: str) -> bool:
        """Whether the learner's weights are sharded (FSDP2 over more than one process)."""
        return self.enabled and mode == "fsdp2"

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

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

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

    def wrap(
        self,
        lm: torch.nn.Module,
        mode: str,
        device: torch.device,
        *,
        compute_dtype: torch.dtype = torch.float32,
    ) -> torch.nn.Module:
        """The module the learner's forward runs through: the LM itself at world size 1, else its
        decoder under DDP or FSDP2 (each decoder layer sharded, then the root). FSDP2's policy:
        parameters all-gathered in `compute_dtype`, gradients reduced and master weights kept in fp32."""
        if not self.enabled:
            return lm
        module = DecoderOnly(lm)
        if mode == "ddp":
            ids = [device.index] if device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if mode == "fsdp2":
            return self._shard(module, device, compute_dtype, reshard_root=False)
        raise ValueError(f"trainer.data_parallel must be ddp or fsdp2, got {mode!r}")

    def wrap_reference(
        self, ref: torch.nn.Module | None, mode: str, device: torch.device, *, compute_dtype: torch.dtype
    ) -> torch.nn.Module | None:
        """The frozen KL reference: sharded like the learner under FSDP2 (it is as large), else as it is
        (DDP has no gradients to sync for it). Its root reshards after each forward: no backward follows."""
        if ref is None or not self.shards(mode):
            return ref
        return self._shard(DecoderOnly(ref), device, compute_dtype, reshard_root=True)

    def _shard(
        self, module: DecoderOnly, device: torch.device, compute_dtype: torch.dtype, *, reshard_root: bool
    ) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (self.world,))
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for layer in decoder_of(module.lm).layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_root)
        return module

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
