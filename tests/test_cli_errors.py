"""Every user error: one line `r3fast: error: ...` on stderr, exit 2, and torch never imported."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from r3fast import cli
from r3fast.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def cases(d: Path) -> list[tuple[list[str], str]]:
    (d / "steps-ten.yaml").write_text("trainer:\n  steps: ten\n")
    (d / "broken.yaml").write_text("trainer: [\n")
    ok = '{"example": {"numbers": [1, 2], "target": 3}, "attempt": "x"}\n'
    (d / "bad.jsonl").write_text(ok + '{"example": 3}\n')
    (d / "full").mkdir()
    (d / "full" / "notes.txt").write_text("an earlier run")
    (d / "empty").mkdir()
    out = str(d / "run")
    train = ["train", "--trainer.output_dir", out]
    return [
        ([*train, "--trainer.steps", "ten"], "--trainer.steps: cannot read 'ten' as int"),
        ([*train, "--trainer.steps", "-5"], "trainer.steps must be >= 1, got -5"),
        ([*train, "--data.failures_per_step", "0"], "data.failures_per_step must be >= 1"),
        ([*train, "--data.max_tokens", "0"], "data.max_tokens must be >= 1"),
        ([*train, "--optim.lr", "-1e-6"], "optim.lr must be > 0"),
        ([*train, "--metrics.progress", "maybe"], "cannot read 'maybe' as bool"),
        ([*train, "--sampler.backend", "tgi"], "one of hf, vllm"),
        ([*train, "--optim.nope", "1"], "--optim.nope: unknown field"),
        ([*train, "--config", str(d / "steps-ten.yaml")], "steps-ten.yaml: trainer.steps: cannot read 'ten'"),
        ([*train, "--config", str(d / "missing.yaml")], "missing.yaml: No such file"),
        ([*train, "--config", str(d / "broken.yaml")], "broken.yaml: not valid YAML"),
        ([*train, "--config", "a.yaml", "--preset", "countdown-demo"], "not both"),
        ([*train, "--preset", "nope"], "invalid choice"),
        ([*train, "--task.name", "nope"], "unknown task 'nope'"),
        ([*train, "--task.options", "{bogus: 1}"], "task 'countdown'"),
        ([*train, "--model.name", "./no/such/dir"], "unknown model './no/such/dir' (no such directory)"),
        ([*train, "--model.device", "gpu"], "model.device must be"),
        (
            [*train, "--data.failures", str(d / "none.jsonl")],
            "mine it first with: r3fast mine --task countdown",
        ),
        ([*train, "--data.failures", str(d / "bad.jsonl")], "bad.jsonl:2: bad failure record"),
        ([*train, "--data.online", "false"], "data.online=false needs data.failures"),
        (["train", "--trainer.output_dir", str(d / "full")], "is not empty: pass --resume"),
        (["train", "--trainer.output_dir", str(d / "empty"), "--resume"], "--resume: no checkpoint"),
        ([*train, "--resume", "--overwrite"], "give one"),
        (["eval", "--n", "0"], "argument --n: must be >= 1, got 0"),
        (["eval", "--task", "nope"], "unknown task 'nope'"),
        (["eval", "--model", "/no/such/model"], "unknown model"),
        (["eval", "--task-options", "[1, 2]"], "--task-options must be a mapping"),
        (["eval", "--out", "/proc/no/such/x.json"], "--out /proc/no/such/x.json: cannot write there"),
        (["eval", "--bogus"], "unrecognised arguments: --bogus"),
        (["mine", "--tries", "0", "--out", "f.jsonl"], "argument --tries: must be >= 1"),
        (["mine", "--task", "countdown"], "needs --out"),
        (["mine", "--temperature", "0", "--out", "f.jsonl"], "--temperature must be > 0"),
    ]


SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    sys.path.insert(0, {root!r})
    from r3fast import cli
    results = []
    for argv, _ in json.loads(sys.argv[1]):
        err, sys.stderr = sys.stderr, io.StringIO()
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        text, sys.stderr = sys.stderr.getvalue(), err
        results.append([code, text, "torch" in sys.modules or "transformers" in sys.modules])
    print(json.dumps(results))
    """
)


def test_user_errors_are_one_line_exit_2_before_torch(tmp_path):
    todo = cases(tmp_path)
    if "wandb" not in sys.modules and __import__("importlib").util.find_spec("wandb") is None:
        todo.append((["train", "--metrics.report_to", "[jsonl, wandb]"], "pip install 'r3fast[wandb]'"))
    assert_one_line_errors(todo, tmp_path)


def assert_one_line_errors(todo: list[tuple[list[str], str]], tmp_path: Path) -> None:
    """Each (argv, expected) in one fresh interpreter: exit 2, one line `r3fast: error: ...` that
    contains `expected`, and neither torch nor transformers imported before it."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(root=str(ROOT)), json.dumps(todo)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    for (argv, expected), (code, err, heavy) in zip(todo, json.loads(proc.stdout)):
        assert code == 2, (argv[:4], code, err)
        assert err.count("\n") == 1 and err.startswith("r3fast: error: "), (argv[:4], err)
        assert expected in err, (argv[:4], err)
        assert not heavy, (argv[:4], "torch or transformers was imported before the error")


def test_cli_exit_carries_the_message():
    with pytest.raises(SystemExit, match="trainer.steps must be >= 1") as e:
        cli.main(["train", "--trainer.steps", "0"])
    assert e.value.code == 2


def test_train_help_lists_every_field_with_doc_and_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for section, cls in SECTIONS.items():
        for name in (f.name for f in dataclasses.fields(cls)):
            assert f"--{section}.{name}" in text, name
    assert "Peak learning rate. (default: 1e-06)" in text
    assert "G: reflections sampled per failure (paper: 8-14). (default: 8)" in text
    assert '(default: ["jsonl", "tensorboard"])' in text
