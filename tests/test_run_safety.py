"""Issue 23 on real tiny runs: resume falls back past a corrupt checkpoint, a run killed before
its first checkpoint starts again, the NaN guard only calls a verified checkpoint intact, a lying
verifier shows in the metrics, host-specific settings fail before any model loads, and SIGINT is
one line with a resumable run directory."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from r3fast.errors import NonFiniteError, UserError
from r3fast.models import resolve_device
from r3fast.tasks import make_task
from r3fast.trainer import R3Trainer
from tests.test_crash_resume import start, tiny_dir, write_config  # noqa: F401 (tiny_dir: a fixture)
from tests.test_trainer import make_trainer, tiny_config


def small(tmp_path, **over):
    return tiny_config(tmp_path, **{"eval.n": 0, "rollout.group_size": 2, **over})


def test_resume_skips_a_corrupt_newest_checkpoint_and_says_so(tmp_path, smol_tokenizer):
    cfg = small(tmp_path, **{"trainer.steps": 2})
    make_trainer(cfg, smol_tokenizer).train()
    weights = tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    resumed = make_trainer(cfg, smol_tokenizer, resume=True)
    assert resumed.step == 1
    assert any("step_00000002 is corrupt" in n for n in resumed.notes), resumed.notes
    assert "resuming from the newest intact checkpoint, step_00000001" in resumed.notes
    resumed.train()
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, smol_tokenizer):
    cfg = small(tmp_path, **{"trainer.steps": 1, "checkpoint.every": 0})

    def killed(step, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(cfg, smol_tokenizer, callbacks=[killed]).train()
    assert not (tmp_path / "run" / "checkpoints").exists()
    resumed = make_trainer(cfg, smol_tokenizer, resume=True)  # not "no checkpoint"
    assert resumed.step == 0 and "starting from step 0" in resumed.notes[0]
    resumed.train()
    make_trainer(cfg, smol_tokenizer, overwrite=True).close()  # and the lock was given back


def test_the_nan_guard_does_not_call_a_missing_checkpoint_intact(tmp_path, smol_tokenizer):
    cfg = small(tmp_path, **{"optim.lr": 1e30, "trainer.max_nonfinite_steps": 1, "checkpoint.every": 0,
                             "trainer.steps": 8, "rollout.group_size": 4})  # fmt: skip
    with pytest.raises(NonFiniteError) as e:
        make_trainer(cfg, smol_tokenizer).train()
    assert "no intact checkpoint exists yet" in str(e.value) and "is intact" not in str(e.value)


def test_a_lying_verifier_is_counted_in_the_metrics(tmp_path, smol_tokenizer):
    task = make_task(
        "liar",
        build_prompt=lambda ex: [{"role": "user", "content": f"Say one word about {ex['w']}."}],
        verify=lambda ex, text: "True",
        examples=[{"w": f"topic {i}"} for i in range(16)],
    )
    cfg = small(tmp_path, **{"trainer.steps": 1})
    from tests.conftest import tiny_llama

    with pytest.warns(UserWarning, match="verify_invalid"):
        R3Trainer(cfg, task=task, model=tiny_llama(len(smol_tokenizer)), tokenizer=smol_tokenizer).train()
    (m,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert m["verify_invalid"] > 0 and m["verify_timeouts"] == 0
    assert m["groups_with_signal"] == 0  # "True" never counted as a success


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")
def test_devices_and_kernels_this_host_lacks_fail_before_the_model_loads(tmp_path, monkeypatch):
    for name in ("cuda", "cuda:3"):
        with pytest.raises(UserError, match=f"device {name}: no CUDA device on this host"):
            resolve_device(name)
    if not torch.backends.mps.is_available():
        with pytest.raises(UserError, match="MPS"):
            resolve_device("mps")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = small(tmp_path, **{"loss.impl": "triton"})
    with pytest.raises(UserError, match="loss.impl=triton needs a CUDA device"):
        R3Trainer(cfg, model=None)  # model=None: the error comes before any load
    assert not (tmp_path / "run").exists()


def test_sigint_is_one_line_and_the_run_resumes(tmp_path, tiny_dir):  # noqa: F811
    cfg = write_config(tmp_path, tiny_dir, steps=3)
    run = tmp_path / "run"
    proc = start(cfg, run)
    while proc.poll() is None and not (run / "checkpoints" / "latest").exists():
        time.sleep(0.05)  # polling, not a threshold
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")  # tiny runs are fast; rare
    assert proc.returncode == 130, out
    last = out.strip().splitlines()[-1]
    assert "Traceback" not in out and last.startswith("r3fast: error: interrupted (SIGINT)"), out
    again = start(cfg, run, "--resume")
    out, _ = again.communicate()
    assert again.returncode == 0, out
