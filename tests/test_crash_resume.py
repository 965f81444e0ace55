"""Crash safety, as a user meets it: `kill -9` at random moments (one of them during a checkpoint
write), then `--resume` until done, must give the uninterrupted run bit for bit (metrics and
weights, CPU); a run with an absurd learning rate stops on the NaN guard with `latest` finite.
Every run is a real `r3fast train` subprocess (tests/crash_run.py adds a task with reward signal).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r3fast.metric_schema import METRICS
from tests.conftest import tiny_llama

RUNNER = Path(__file__).with_name("crash_run.py")
# what a run measures rather than computes: wall-clock seconds (every phase's too), rates, memory
TIMING = {k for k, m in METRICS.items() if m.unit in ("s", "tokens/s")} | {"peak_memory_mb"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny random Llama saved with save_pretrained next to the real SmolLM2 tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama(len(smol_tokenizer)).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def write_config(tmp_path: Path, tiny_dir: Path, steps: int) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"model: {{name: '{tiny_dir}', device: cpu}}\n"
        "task: {name: parity}\n"
        "sampler: {max_answer_tokens: 4, max_reflection_tokens: 6}\nrollout: {group_size: 2}\n"
        "data: {failures_per_step: 2, mine_tries: 1, max_tokens: 256}\n"
        "optim: {lr: 1e-3}\n"
        f"trainer: {{steps: {steps}}}\n"
        "checkpoint: {every: 1}\neval: {n: 0}\nmetrics: {progress: false, report_to: [jsonl]}\n"
    )
    return cfg


def start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    # One thread everywhere: the straight and the resumed runs reduce in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, str(RUNNER), "train", "--config", str(cfg), "--trainer.output_dir", str(out)]
    return subprocess.Popen(
        [*argv, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_during_checkpoint_write(proc: subprocess.Popen, ckpts: Path) -> bool:
    """SIGKILL as soon as a checkpoint is half-written (a `.step_*.tmp.*` dir exists) after the
    first one is complete; False if the run finished first."""
    while proc.poll() is None:
        try:
            names = os.listdir(ckpts)
        except FileNotFoundError:
            continue
        if "latest" in names and any(n.startswith(".step_") and ".tmp." in n for n in names):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
    return False


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def test_sigkill_and_resume_equals_straight_run(tmp_path, tiny_dir):
    cfg = write_config(tmp_path, tiny_dir, steps=3)
    straight = start(cfg, tmp_path / "straight")
    crash_dir = tmp_path / "crash"
    first = start(cfg, crash_dir)
    assert kill_during_checkpoint_write(first, crash_dir / "checkpoints"), first.stdout.read()
    assert [n for n in os.listdir(crash_dir / "checkpoints") if ".tmp." in n]  # torn write left behind
    rng = random.Random(16)
    attempts = 0
    while True:  # resume, killed at a random moment, until a run completes
        attempts += 1
        proc = start(cfg, crash_dir, "--resume")
        if attempts < 3:
            try:
                proc.wait(timeout=rng.uniform(2.0, 12.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                continue
        out, _ = proc.communicate()
        assert proc.returncode == 0, out
        break
    out, _ = straight.communicate()
    assert straight.returncode == 0, out
    assert metrics(crash_dir) == metrics(tmp_path / "straight")
    assert [m["step"] for m in metrics(crash_dir)] == [1, 2, 3]
    a, b = weights(tmp_path / "straight"), weights(crash_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not [n for n in os.listdir(crash_dir / "checkpoints") if n.startswith(".")]
    assert any(m["updated"] for m in metrics(crash_dir))  # the weights really moved


def test_absurd_lr_stops_on_the_nan_guard_with_latest_finite(tmp_path, tiny_dir):
    cfg = write_config(tmp_path, tiny_dir, steps=8)
    run = tmp_path / "nan"
    proc = start(cfg, run, "--optim.lr", "1e30", "--trainer.max_nonfinite_steps", "2")
    out, _ = proc.communicate()
    assert proc.returncode == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("r3fast: error: stopped at step") and "non-finite" in last, out
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]  # strict JSON: no bare NaN / Infinity
    assert "NaN" not in "".join(lines) and "Infinity" not in "".join(lines)
    skipped = [m for m in records if m["skipped_nonfinite"]]
    assert len(skipped) >= 2 and all(set(m["nonfinite"]) & {"loss", "grad_norm"} for m in skipped)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    for name, t in load_file(str(latest / "model.safetensors")).items():
        assert torch.isfinite(t).all(), name
    assert not (run / "final").exists()  # nothing exported from a stopped run
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] < 8
