"""Atomic checkpoints and the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from r3fast.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from r3fast.config import OptimConfig
from r3fast.optim import build_optimizer, build_scheduler


def _setup(lr: float = 0.1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    cfg = OptimConfig(lr=lr, warmup_steps=2, schedule="cosine")
    opt = build_optimizer(model.parameters(), cfg)
    return model, opt, build_scheduler(opt, cfg, total_steps=6)


def test_schedule_warmup_then_cosine_to_zero():
    _, _, sched = _setup(lr=1.0)
    lrs = []
    for _ in range(7):
        lrs.append(sched.get_last_lr()[0])
        sched.step()
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_checkpoint_roundtrip_and_crash_leaves_previous(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    save_checkpoint(
        tmp_path, 1, model=model, optimizer=opt, scheduler=sched, trainer_state={"source": {"cursor": 5}}
    )
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draw = torch.rand(3)  # the first draw after the saved RNG state

    # A crash halfway through writing step 2 must leave step 1 as the latest, intact checkpoint.
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(
            tmp_path, 2, model=model, optimizer=opt, scheduler=sched, trainer_state={"source": {}}
        )
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]

    fresh, fresh_opt, fresh_sched = _setup(lr=0.5)
    torch.manual_seed(99)  # loading must bring the checkpoint's RNG state back
    state = load_checkpoint(
        latest_checkpoint(tmp_path), model=fresh, optimizer=fresh_opt, scheduler=fresh_sched
    )
    assert state["step"] == 1 and state["source"] == {"cursor": 5}
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert fresh_sched.state_dict() == sched.state_dict()
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert torch.equal(torch.rand(3), expected_draw)
