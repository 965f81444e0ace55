"""Data parallelism on torch.distributed (gloo on CPU): K processes compute exactly the update of one
process holding all K shares, under DDP and FSDP2; `torchrun -m r3fast train` runs end to end,
rank 0 alone writes, and a resume needs the same world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from r3fast.config import LossConfig
from r3fast.data import TrainSequence, pack_step
from r3fast.distributed import Dist
from r3fast.guard import NonFiniteGuard
from r3fast.learner import Learner
from r3fast.loss import SpanLoss
from r3fast.model import use_packed_attention
from tests.conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512
CLIP = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequences() -> list[TrainSequence]:
    """3 groups of 3 reflections (prefixes and spans of different lengths)."""
    g = torch.Generator().manual_seed(11)
    out = []
    for grp, (p, spans) in enumerate([(9, (4, 7, 2)), (14, (5, 3, 9)), (6, (8, 1, 6))]):
        prefix = torch.randint(3, VOCAB, (p,), generator=g).tolist()
        advs = torch.randn(3, generator=g).tolist()
        for n, a in zip(spans, advs):
            refl = torch.randint(3, VOCAB, (n,), generator=g).tolist()
            out.append(TrainSequence.from_parts(prefix, refl, a, group_id=grp))
    return out


def learn(seqs, loss_type: str, dist: Dist, mode: str, steps: int = 3) -> tuple[dict, list[float]]:
    """Weights after `steps` learner steps over `seqs` (this rank's share), gathered in full, and the
    step losses. SGD, so that a weight's error is lr x its gradient's (AdamW divides by |g|); a clip
    below the gradients' norm, so the global norm over every rank's shards decides each update."""
    model = use_packed_attention(tiny_llama(VOCAB, seed=5))
    ref = tiny_llama(VOCAB, seed=5)
    use_packed_attention(ref).eval().requires_grad_(False)
    ref = dist.wrap_reference(ref, mode, torch.device("cpu"), compute_dtype=torch.float32)  # FSDP2: sharded
    module = dist.wrap(model, mode, torch.device("cpu"))
    loss = SpanLoss(
        LossConfig(loss_type=loss_type, beta=0.04, impl="torch"), temperature=0.9, max_span_tokens=9
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    learner = Learner(model=model, ref_model=ref, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=torch.device("cpu"), grad_clip=CLIP, dist=dist, module=module)  # fmt: skip
    losses = []
    for step in range(steps):
        plan, rows = (None, [])
        if seqs:
            plan, rows = pack_step(seqs, max_tokens=40, shared_prefix=False, seed=0, step=step)
        m = learner.step(plan, rows)
        assert m["updates"] == 1 and m["grad_norm"] > CLIP, m  # clipped: the norm is global
        losses.append(m["loss"])
    return losses, {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}  # fmt: skip


def worker(rank: int, world: int, port: int, loss_type: str, mode: str, split: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist = Dist.from_env("cpu")
    seqs = sequences()
    share = seqs[rank::world] if split == "interleaved" else (seqs if rank == 0 else [])
    losses, weights = learn(share, loss_type, dist, mode)
    if rank == 0:
        torch.save((losses, weights), out)
    dist.close()


@pytest.mark.parametrize(
    "mode,loss_type,split",
    [
        ("ddp", "dapo", "interleaved"),
        ("ddp", "grpo", "interleaved"),
        ("ddp", "dr_grpo", "interleaved"),
        ("ddp", "dapo", "one_rank_empty"),  # a rank without a group with signal still joins the all-reduce
        ("fsdp2", "dapo", "interleaved"),
        ("fsdp2", "grpo", "one_rank_empty"),  # FSDP2: the empty rank runs as many (empty) rows as the other
    ],
)
def test_two_processes_equal_one_with_both_shares(tmp_path, mode, loss_type, split):
    out = tmp_path / "w.pt"
    mp.spawn(worker, args=(2, free_port(), loss_type, mode, split, str(out)), nprocs=2, join=True)
    two_losses, two = torch.load(out)
    one_losses, one = learn(sequences(), loss_type, Dist(), mode)
    assert two_losses == pytest.approx(one_losses, rel=1e-6, abs=1e-7)
    init = dict(tiny_llama(VOCAB, seed=5).named_parameters())
    assert any(not torch.equal(one[n], init[n]) for n in one), "the single process did not train"
    for name, w in one.items():
        torch.testing.assert_close(two[name], w, rtol=0, atol=1e-6, msg=name)


def run_torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "-m", "r3fast", "train", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def loop_args(model_dir: Path, run: Path, steps: int = 2, every: int = 1) -> list[str]:
    """The README's demo at tiny size, on the HF sampler."""
    return ["--preset", "countdown-demo", "--model.name", str(model_dir), "--trainer.output_dir", str(run),
            "--trainer.steps", str(steps), "--eval.n", "4", "--checkpoint.every", str(every),
            "--data.failures_per_step", "2", "--rollout.group_size", "2", "--sampler.max_answer_tokens", "6",
            "--sampler.max_reflection_tokens", "6", "--metrics.progress", "false",
            "--metrics.tensorboard", "false", "--data.mine_tries", "1", "--sampler.backend", "hf",
            "--eval.every", "0"]  # fmt: skip


def tiny_model_dir(tmp_path: Path, tokenizer) -> Path:
    model_dir = tmp_path / "tiny"
    tiny_llama(len(tokenizer), seed=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def test_torchrun_trains_end_to_end_and_resumes_at_another_world_size(tmp_path, smol_tokenizer):
    run = tmp_path / "run"
    base = loop_args(tiny_model_dir(tmp_path, smol_tokenizer), run)
    p = run_torchrun(base, tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # one writer
    assert metrics[0]["groups"] == 4, metrics[0]  # 2 ranks x 2 failures
    state = json.loads((run / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert len(state["sources"]) == 2  # every rank's failure cursor
    assert (run / "final" / "model.safetensors").is_file() and (run / "r3_effect.json").is_file()

    p = run_torchrun([*base, "--trainer.steps", "3", "--resume"], tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    # one process continues a two-process run: the failure order re-dealt, said on the screen
    p = run_torchrun([*base, "--trainer.steps", "4", "--resume"], tmp_path, nproc=1)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "saved by 2 process(es), continued by 1" in p.stdout, p.stdout[-2000:]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and metrics[-1]["groups"] == 2
