"""Issue 23: `--overwrite` deletes only what r3fast wrote (symlinks not followed), and one run at a
time holds a run directory (an flock that dies with its holder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from r3fast.errors import UserError
from r3fast.manifest import claim, written
from r3fast.rundir import check_run_dir, prepare_run_dir
from r3fast.runlock import RunLock, check_unlocked

ROOT = Path(__file__).resolve().parents[1]
USER_FILES = (
    "vacation.png", "eval_results_2024.json", "checkpoints/my_model.bin", "final/thesis_final.docx",
    "wandb/run.log", "tensorboard/events", "config.json", "metrics.jsonl", "report.md", "summary.json",
)  # fmt: skip


def fill(d: Path, names=USER_FILES) -> None:
    for name in names:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("the user's")


def a_finished_run(run: Path) -> None:
    """What a run leaves: its marker and manifest, and its artefacts."""
    prepare_run_dir(run, resume=False, overwrite=False)
    claim(run, ["config.json", "metrics.jsonl", "checkpoints", "final", "reward.png"])
    fill(
        run,
        [
            "config.json",
            "metrics.jsonl",
            "checkpoints/step_00000001/x",
            "final/model.safetensors",
            "reward.png",
        ],
    )


def test_overwrite_refuses_a_directory_r3fast_did_not_create(tmp_path):
    user = tmp_path / "mine"
    fill(user)
    before = sorted(p.relative_to(user).as_posix() for p in user.rglob("*"))
    for flags in ({"overwrite": True}, {"overwrite": False}):
        with pytest.raises(UserError, match="was not created by r3fast|is not empty"):
            prepare_run_dir(user, resume=False, **flags)
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == before


def test_overwrite_removes_the_runs_files_and_keeps_the_users(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "thesis"
    a_finished_run(run)
    (run / "notes.txt").write_text("the user's")  # added by the user later: not r3fast's
    fill(elsewhere, ["thesis_final.docx"])
    (run / "final" / "model.safetensors").unlink()
    (run / "final").rmdir()
    os.symlink(elsewhere, run / "final")  # `final` a symlink: unlinked, never followed
    with pytest.raises(UserError, match="holds a run with checkpoints"):
        check_run_dir(run, resume=False, overwrite=False)
    notes = prepare_run_dir(run, resume=False, overwrite=True)
    assert any("removed" in n for n in notes)
    assert sorted(os.listdir(run)) == [".r3fast-run.json", "notes.txt"]
    assert (elsewhere / "thesis_final.docx").read_text() == "the user's" and written(run) == []


def test_overwrite_refuses_a_users_file_where_the_run_would_write(tmp_path):
    run = tmp_path / "run"
    a_finished_run(run)
    (run / "vacation.png").write_text("the user's")
    with pytest.raises(UserError, match="vacation.png not written by r3fast would be replaced"):
        prepare_run_dir(run, resume=False, overwrite=True)
    assert (run / "config.json").exists() and (run / "vacation.png").exists()  # nothing deleted


def test_run_killed_before_its_first_checkpoint_restarts_without_flags(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, resume=False, overwrite=False)
    claim(run, ["config.json", "metrics.jsonl"])
    fill(run, ["config.json", "metrics.jsonl"])
    prepare_run_dir(run, resume=False, overwrite=False)  # neither "not empty" nor --overwrite needed
    assert sorted(os.listdir(run)) == [".r3fast-run.json"]
    fill(run, ["metrics.jsonl"])
    claim(run, ["metrics.jsonl"])
    notes = prepare_run_dir(run, resume=True, overwrite=False)  # --resume: from step 0
    assert notes[0] == "resume: no checkpoint was written yet, starting from step 0"


def test_a_second_run_is_refused_naming_the_first_ones_pid_and_a_dead_lock_is_not_stale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from r3fast.runlock import RunLock; "
         f"lock = RunLock({str(run)!r}); print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by another r3fast run \\(pid {holder.pid}\\)"):
            check_run_dir(run, resume=False, overwrite=False)
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunLock(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    check_unlocked(run)  # the kernel dropped the dead holder's lock
    mine = RunLock(run)
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        RunLock(run)  # one holder, even within a process
    mine.release()
    RunLock(run).release()
