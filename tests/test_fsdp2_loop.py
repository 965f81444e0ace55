"""FSDP2 in the training loop (gloo on CPU): `torchrun -m r3fast train --trainer.data_parallel fsdp2`
runs end to end with sharded checkpoints (torch.distributed.checkpoint); a run killed with SIGKILL
and resumed is bit-identical to the uninterrupted one; a world-2 checkpoint loads at world 1 to the
same weights; the sampler's own copy equals the gathered learner weights after every sync; the
failure cursors are re-dealt deterministically at another world size."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from r3fast.distributed import Dist
from r3fast.failures import FailureSource
from r3fast.model import use_packed_attention
from r3fast.policy import inference_copy
from r3fast.sampling.hf import HFSampler
from r3fast.tasks import get_task
from tests.conftest import tiny_llama
from tests.test_distributed import ROOT, free_port, run_torchrun, tiny_model_dir


def fsdp2_args(model_dir: Path, run: Path, tmp: Path, steps: int = 3) -> list[str]:
    """A tiny FSDP2 run with a reward signal (tests/crash_run.py's parity task: a random model is right
    about half the time), β > 0 so the sharded reference runs too, a sharded checkpoint every step."""
    cfg = tmp / "fsdp2.yaml"
    cfg.write_text(
        f"model: {{name: '{model_dir}', device: cpu}}\n"
        "task: {name: 'tests.crash_run:parity_task'}\n"
        "sampler: {backend: hf, max_answer_tokens: 4, max_reflection_tokens: 6}\nrollout: {group_size: 2}\n"
        "loss: {beta: 0.04}\ndata: {failures_per_step: 2, mine_tries: 1, max_tokens: 256}\n"
        "optim: {lr: 1e-3}\ncheckpoint: {every: 1}\neval: {n: 4}\n"
        "metrics: {progress: false, report_to: [jsonl]}\n"
        f"trainer: {{steps: {steps}, data_parallel: fsdp2, output_dir: '{run}'}}\n"
    )
    return ["--config", str(cfg)]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory, smol_tokenizer):
    """An uninterrupted 2-process FSDP2 run of 3 steps, a sharded checkpoint after each."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    model_dir, run = tiny_model_dir(tmp, smol_tokenizer), tmp / "straight"
    p = run_torchrun(fsdp2_args(model_dir, run, tmp), tmp)
    assert p.returncode == 0, p.stderr[-4000:]
    return model_dir, run


def test_fsdp2_loop_runs_end_to_end_with_sharded_checkpoints(straight):
    model_dir, run = straight
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["groups"] == 4, metrics[0]  # 2 ranks x 2 failures
    assert sum(m["updates"] for m in metrics) >= 2, metrics  # groups with signal: real updates
    ckpt = run / "checkpoints" / "step_00000003"
    shards = sorted(p.name for p in (ckpt / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], shards
    assert not list(ckpt.glob("*.safetensors"))  # no rank gathered the model for a checkpoint
    assert len(json.loads((ckpt / "trainer_state.json").read_text())["sources"]) == 2
    assert (run / "r3_effect.json").is_file()
    init = load_file(str(next(model_dir.glob("*.safetensors"))))
    final = final_weights(run)
    assert any(not torch.equal(final[k], init[k]) for k in final), "the run did not train"


def job_pids(root: int) -> list[int]:
    """`root` and every process below it, read from /proc. torchrun starts each worker in a session
    of its own, so killing the launcher's process group would leave the workers running."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:  # the task ended meanwhile
                pass
    return pids


def gone(pid: int) -> bool:
    """Ended (reaped, or a zombie: its files, flocks included, are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def test_fsdp2_kill9_then_resume_is_bit_identical(straight, tmp_path, seed):
    model_dir, run_a = straight
    run = tmp_path / "killed"
    args = fsdp2_args(model_dir, run, tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={free_port()}", "-m", "r3fast", "train", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    k = random.Random(seed).choice([1, 2])  # the moment: right after checkpoint k is in place
    latest, deadline = run / "checkpoints" / "latest", time.monotonic() + 600
    while not (latest.is_file() and latest.read_text() == f"step_{k:08d}"):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.05)
    pids = job_pids(proc.pid)  # the whole job at once, as a node failure would end it
    assert len(pids) >= 3, pids  # the launcher and both ranks
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while not all(map(gone, pids)):
        assert time.monotonic() < deadline, [p for p in pids if not gone(p)]
        time.sleep(0.05)
    p = run_torchrun([*args, "--resume"], tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()][-1] == 3
    assert_identical(final_weights(run), final_weights(run_a))


def test_fsdp2_checkpoint_loads_at_world_one_to_the_same_weights(straight, tmp_path):
    """A world-2 checkpoint resumed by one process (DCP reshards): with no step left to run, the
    export is the saved weights, equal to the two-process run's own export bit for bit."""
    model_dir, run_a = straight
    run = tmp_path / "copy"
    shutil.copytree(run_a, run)
    shutil.rmtree(run / "final")
    args = [*fsdp2_args(model_dir, run, tmp_path), "--resume"]
    p = run_torchrun(args, tmp_path, nproc=1)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "saved by 2 process(es), continued by 1" in p.stdout
    assert_identical(final_weights(run), final_weights(run_a))


def _sync_worker(rank: int, world: int, port: int, tokenizer, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist = Dist.from_env("cpu")
    model = use_packed_attention(tiny_llama(len(tokenizer), seed=3)).train()
    copy = inference_copy(model, "float32")
    module = dist.wrap(model, "fsdp2", torch.device("cpu"))
    sampler = HFSampler(copy, tokenizer, own_weights=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(2):  # a real update each time, then the sync the loop does
        ids = torch.randint(3, len(tokenizer), (1, 12 + rank), generator=torch.Generator().manual_seed(rank))
        h = module(input_ids=ids)
        (h.float().pow(2).mean()).backward()
        opt.step()
        opt.zero_grad()
        sampler.sync_weights(model)
        whole = {n: p.full_tensor() for n, p in model.named_parameters()}
        mine = dict(copy.named_parameters())
        assert all(torch.equal(mine[n], w) for n, w in whole.items()), f"rank {rank} step {step}"
    if rank == 0:
        torch.save(True, out)
    del module
    dist.close()


def test_sampler_copy_equals_the_gathered_learner_weights_after_sync(tmp_path, smol_tokenizer):
    out = tmp_path / "ok.pt"
    mp.spawn(_sync_worker, args=(2, free_port(), smol_tokenizer, str(out)), nprocs=2, join=True)
    assert torch.load(out)


def test_redeal_is_deterministic_and_never_repeats_an_item():
    task = get_task("countdown", num_numbers=2, number_range=[1, 20], target_range=[2, 40], ops="+")

    def source(rank: int, world: int) -> FailureSource:
        return FailureSource(task=task, online=True, seed=7, rank=rank, world=world, pool_size=64)

    saved = [source(r, 2) for r in range(2)]
    handed = [ex for r, s in enumerate(saved) for ex in s._take(3 + r)]  # ranks that took unequal shares
    states = [s.state_dict() for s in saved]
    assert FailureSource.redeal(states, 2, 1) == states[1]  # the same world: the same cursor
    for world in (1, 3, 4):
        again = [FailureSource.redeal(states, world, r) for r in range(world)]
        assert again == [FailureSource.redeal(states, world, r) for r in range(world)]
        later = []
        for r, st in enumerate(again):
            s = source(r, world)
            s.load_state_dict(st)
            later += s._take(5)
        key = [json.dumps(x, sort_keys=True) for x in later]
        assert len(set(key)) == len(key)  # the new ranks' shares are disjoint
        assert not set(key) & {json.dumps(x, sort_keys=True) for x in handed}, world
