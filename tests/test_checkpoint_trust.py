"""Issue 23: nothing executes from a checkpoint, and a checkpoint is verified before it is trusted
(digests, no path out of the run directory, fall-back to the newest intact one)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from r3fast.checkpoint import load_checkpoint, save_checkpoint
from r3fast.ckpt_verify import find_checkpoint, seal
from r3fast.errors import UserError
from r3fast.rundir import saved_config
from tests.test_checkpoint_optim import _setup


def two_checkpoints(run: Path):
    model, opt, sched = _setup()
    for step in (1, 2):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        save_checkpoint(run, step, model=model, optimizer=opt, scheduler=sched, trainer_state={"config": {}})
    return model, opt, sched


def reseal(ckpt: Path, **changes) -> None:
    """What an attacker who also rewrites the digests would do."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state = {k: v for k, v in state.items() if k not in ("files", "sha256", "format")}
    state.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        state.pop(k)
    (ckpt / "trainer_state.json").write_text(json.dumps(seal(state, ckpt)))


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickled_payload_in_state_pt_never_runs(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    two_checkpoints(run)
    newest = run / "checkpoints" / "step_00000002"
    torch.save({"optimizer": Payload(marker)}, newest / "state.pt")
    report = find_checkpoint(run)  # digests no longer match: skipped, the older one is used
    assert report.path.name == "step_00000001" and "state.pt does not match its sha256" in report.notes()[0]
    reseal(newest)  # digests fixed too: weights_only=True still refuses the pickle
    assert find_checkpoint(run).path == newest
    model, opt, sched = _setup()
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(newest, model=model, optimizer=opt, scheduler=sched)
    assert not marker.exists()


def test_latest_and_symlinks_never_lead_outside_the_run(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    two_checkpoints(run)
    two_checkpoints(other)
    ckpts = run / "checkpoints"
    for target in (str(other / "checkpoints" / "step_00000002"), "../../other/checkpoints/step_00000002"):
        (ckpts / "latest").write_text(target)
        assert find_checkpoint(run).path == ckpts / "step_00000002"
    os.symlink(other / "checkpoints" / "step_00000002", ckpts / "step_00000009")
    report = find_checkpoint(run)
    assert report.path == ckpts / "step_00000002" and "outside the run directory" in report.notes()[0]
    (ckpts / "latest").unlink()  # a missing latest loses nothing
    assert find_checkpoint(run).path == ckpts / "step_00000002"


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-7])


def _garble_tail(p: Path) -> None:
    data = bytearray(p.read_bytes())
    # seeded per test (conftest); tensor data, not the header: safetensors alone would load it
    data[-8:] = random.randbytes(8)
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated safetensors": ("model.safetensors", _truncate, "model.safetensors does not match"),
    "garbled safetensors data": ("model.safetensors", _garble_tail, "model.safetensors does not match"),
    "random bytes in state.pt": (
        "state.pt", lambda p: p.write_bytes(random.randbytes(300)), "state.pt does not"
    ),
    "empty state.pt": ("state.pt", lambda p: p.write_bytes(b""), "state.pt does not match"),
    "missing state.pt": ("state.pt", Path.unlink, "state.pt is missing"),
    "garbage trainer_state": ("trainer_state.json", lambda p: p.write_bytes(b"\xff{"), "unreadable"),
    "edited trainer_state": (
        "trainer_state.json",
        lambda p: p.write_text(p.read_text().replace('"step": 2', '"step": 7')),
        "does not match its digest",
    ),
    "missing trainer_state": ("trainer_state.json", Path.unlink, "no trainer_state.json"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(tmp_path, case):
    run = tmp_path / "run"
    two_checkpoints(run)
    name, corrupt, why = CORRUPTIONS[case]
    corrupt(run / "checkpoints" / "step_00000002" / name)
    report = find_checkpoint(run)
    assert report.path.name == "step_00000001"
    notes = report.notes()
    assert "checkpoint step_00000002 is corrupt" in notes[0] and why in notes[0], notes
    assert notes[1] == "resuming from the newest intact checkpoint, step_00000001"
    model, opt, sched = _setup()
    with pytest.raises(UserError, match="step_00000002"):  # never loaded, even when asked for by path
        load_checkpoint(run / "checkpoints" / "step_00000002", model=model, optimizer=opt, scheduler=sched)
    assert load_checkpoint(report.path, model=model, optimizer=opt, scheduler=sched)["step"] == 1


def test_old_pickle_format_and_configless_state_are_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    two_checkpoints(run)
    old = run / "checkpoints" / "step_00000002"
    state = json.loads((old / "trainer_state.json").read_text())
    (old / "trainer_state.json").write_text(json.dumps({"step": 2, "config": state["config"]}))
    assert "written by an older r3fast" in find_checkpoint(run).notes()[0]
    for p in (run / "checkpoints").glob("step_*"):
        reseal(p, config=None)  # digests right, but no config to compare a resume with
    with pytest.raises(UserError, match="records no config, so the resume cannot be checked"):
        saved_config(run)
