"""Tasks by import path and by entry point (a tiny installed distribution written here), resolved
before any model loads, with one-line errors."""

from __future__ import annotations

import textwrap

import pytest

from r3fast import cli
from r3fast.errors import UserError
from r3fast.tasks import available_tasks, get_task
from r3fast.validate import build_task

MODULE = """
from r3fast.tasks import make_task

def make_task_fn(size=4, word="topic"):
    return make_task(
        "echo",
        build_prompt=lambda ex: [{"role": "user", "content": f"Say {ex['w']}."}],
        verify=lambda ex, text: ex["w"] in text,
        examples=[{"w": f"{word} {i}"} for i in range(size)],
    )

class EchoTask:
    name = "echo-class"
    def __init__(self, n=3):
        self.n = n
    def build_prompt(self, ex):
        return [{"role": "user", "content": ex["w"]}]
    def verify(self, ex, text):
        return ex["w"] == text
    def dataset(self, n, seed=0, split="train"):
        return [{"w": str(i)} for i in range(self.n)][:n]

def raises(**kw):
    raise RuntimeError("no GPU quota")

def not_a_task():
    return 42

CONSTANT = 3
"""


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """`user_tasks` importable, and a distribution `r3-extra-tasks` that registers two entry points."""
    (tmp_path / "user_tasks.py").write_text(textwrap.dedent(MODULE))
    info = tmp_path / "r3_extra_tasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: r3-extra-tasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[r3fast.tasks]\necho = user_tasks:make_task_fn\nbroken = user_tasks:not_a_task\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_tasks"


def test_import_path_factory_and_class_get_their_options(pkg):
    task = get_task(f"{pkg}:make_task_fn", size=10, word="w")
    assert task.name == "echo" and len(task.dataset(None) + task.dataset(None, split="eval")) == 10
    cls = get_task(f"{pkg}:EchoTask", n=2)
    assert cls.name == "echo-class" and cls.dataset(None) == [{"w": "0"}, {"w": "1"}]


def test_entry_point_task_is_found_by_name(pkg):
    assert "echo" in available_tasks() and "countdown" in available_tasks()
    task = get_task("echo", size=5)
    assert task.name == "echo" and task.verify({"w": "a"}, "say a")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("no_such_pkg.tasks:make", {}, "module 'no_such_pkg' not found"),
        ("user_tasks:missing", {}, "user_tasks has no attribute 'missing'"),
        ("user_tasks:CONSTANT", {}, "is a int, not a task factory"),
        ("user_tasks:raises", {}, "raised RuntimeError: no GPU quota"),
        ("user_tasks:make_task_fn", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ("user_tasks:not_a_task", {}, "returned a int, not a Task: it lacks name"),
        ("broken", {}, "entry point 'user_tasks:not_a_task' of r3-extra-tasks"),
        ("nope", {}, "unknown task 'nope'; available: broken, countdown"),
    ],
)
def test_one_line_errors(pkg, name, options, message):
    with pytest.raises(UserError, match=message) as e:
        build_task(name, options)
    assert "\n" not in str(e.value)


def test_cli_train_reports_a_bad_task_before_any_model_loads(pkg, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("task:\n  name: user_tasks:raises\nmodel:\n  name: ./no/such/model\n")
    argv = ["train", "--config", str(tmp_path / "run.yaml"), "--trainer.output_dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "no GPU quota" in err  # the task, not the model
