"""The README's commands and library examples, run as written, with a tiny random model and tiny
sizes appended (later flags win). Each fenced bash block is one session in a fresh directory, so
commands that build on each other (mine, then train on the failures) do so as a user's would.
Nothing is downloaded: the model is a tiny random Llama saved next to the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

import r3fast
from r3fast import cli
from tests.conftest import tiny_llama

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def r3fast_commands(block: str) -> list[list[str]]:
    """The `r3fast ...` commands of a bash block (`bash .ci/setup && .venv/bin/r3fast ...` too)."""
    out = []
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        m = re.search(r"(?:^|&&\s*)(?:\S*/)?r3fast (.*)$", line)
        if m:
            out.append(shlex.split(m.group(1)))
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama(len(smol_tokenizer)).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def tiny_args(argv: list[str], model: Path) -> list[str]:
    cmd = argv[0]
    if cmd == "eval":
        return ["--model", str(model), "--n", "2", "--max-answer-tokens", "4", "--max-reflection-tokens", "4"]
    if cmd == "mine":
        return [
            "--model",
            str(model),
            "--n",
            "3",
            "--tries",
            "2",
            "--max-answer-tokens",
            "4",
            "--sampler",
            "hf",
        ]
    flags = {
        "model.name": model,
        "model.device": "cpu",
        "model.dtype": "float32",
        "sampler.backend": "hf",
        "rollout.group_size": 2,
        "sampler.max_answer_tokens": 4,
        "sampler.max_reflection_tokens": 4,
        "data.failures_per_step": 1,
        "data.mine_tries": 1,
        "data.max_tokens": 512,
        "eval.n": 2,
        "metrics.progress": "false",
        "trainer.steps": 2 if "--resume" in argv else 1,
    }
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def run(argv: list[str], model: Path) -> None:
    assert cli.main([*argv, *tiny_args(argv, model)]) == 0, argv


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_quickstart_block(session, tiny_dir):
    (cmd,) = [c for b in blocks("bash") for c in r3fast_commands(b) if ".ci/setup" in b]
    run(cmd, tiny_dir)
    assert (session / "runs/countdown-demo/report.md").is_file()


def test_command_line_block(session, tiny_dir, capsys):
    """eval -> mine -> train (preset) -> resume it longer -> train on the mined failures from a
    config file -> the paper preset, which first names the mine command, and then trains."""
    (block,) = [b for b in blocks("bash") if "r3fast mine" in b]
    (session / "run.yaml").write_text(blocks("yaml")[0])
    commands = r3fast_commands(block)
    assert [c[0] for c in commands] == ["eval", "mine", "train", "train", "train", "train"]
    for argv in commands:
        if argv[-1] == "countdown-paper":  # needs its failure set first: the error names the command
            capsys.readouterr()
            with pytest.raises(SystemExit) as e:
                cli.main(argv)
            assert e.value.code == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and err.startswith("r3fast: error:"), err
            mine = shlex.split(err.split("mine it first with: ", 1)[1])
            assert mine[:2] == ["r3fast", "mine"]
            run(mine[1:], tiny_dir)
            assert Path("failures/countdown-paper.jsonl").is_file()
        run(argv, tiny_dir)
    assert json.loads(Path("eval.json").read_text())["summary"]["n"] == 2
    assert [m["step"] for m in map(json.loads, open("runs/countdown-demo/metrics.jsonl"))] == [1, 2]
    assert Path("runs/my-run/final/config.json").is_file()
    assert Path("runs/countdown-paper/report.md").is_file()


TINY_LIB = "apply_overrides(cfg, TINY)\n"


def exec_example(code: str, model: Path) -> None:
    """Run a library example with tiny settings applied just before the trainer is built."""
    lines = code.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "R3Trainer(cfg" in line)
    indent = re.match(r"\s*", lines[at]).group(0)
    tiny = [x for x in tiny_args(["train"], model) if x != "--model.dtype" and x != "float32"]
    scope = {"TINY": tiny, "__name__": "readme_example"}
    exec(
        "from r3fast.config import apply_overrides\n"
        + "".join(lines[:at])
        + indent
        + TINY_LIB
        + "".join(lines[at:]),
        scope,
    )


def test_readme_library_example(session, tiny_dir):
    (code,) = blocks("python")
    exec_example(code, tiny_dir)
    assert (session / "runs/r3/report.md").is_file()


def test_package_docstring_example(session, tiny_dir):
    doc = r3fast.__doc__.split("\n\n", 1)[1]
    code = "\n".join(line[4:] for line in doc.splitlines() if line.startswith("    ") or not line.strip())
    exec_example(code.split("\n\n\n")[0].strip() + "\n", tiny_dir)
    assert (session / "runs/r3/report.md").is_file()


def test_your_own_task_section(session, tiny_dir, capsys, monkeypatch):
    """The dataset task and the import-path task train from their YAML files alone; `r3fast env`
    prints the report: every command of the "Your own task" section, as written."""
    section = README.read_text().split("## Your own task", 1)[1].split("\n## ", 1)[0]
    files = {
        b.splitlines()[0].split()[1].rstrip(":"): b
        for b in re.findall(r"```(?:yaml|py)\n(.*?)```", section, re.S)
    }
    assert sorted(files) == ["my_task.yaml", "my_tasks.py", "qa.yaml"]
    for name, text in files.items():
        (session / name).write_text(text)
    (session / "data").mkdir()
    rows = [{"question": f"What is {i} squared?", "answer": str(i * i)} for i in range(20)]
    (session / "data/qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (block,) = [b for b in blocks("bash") if "r3fast env" in b]
    commands = r3fast_commands(block)
    assert [c[0] for c in commands] == ["train", "train", "env"]
    monkeypatch.syspath_prepend(str(session))  # my_tasks.py, importable as the user's own module
    for argv in commands:
        if argv[0] == "env":
            assert cli.main(argv) == 0
            assert "span-loss self-test" in capsys.readouterr().out
        else:
            run(argv, tiny_dir)
    sys.modules.pop("my_tasks", None)  # the next session's my_tasks.py is another file
    for run_dir in ("runs/qa", "runs/parity"):
        assert (session / run_dir / "report.md").is_file()
        assert (session / run_dir / "final/README.md").read_text().startswith("---\n")
