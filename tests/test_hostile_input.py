"""Issue 23, hostile or careless input: every case is one line `r3fast: error: ...`, exit 2,
before torch is imported (same harness as tests/test_cli_errors.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli_errors import assert_one_line_errors


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


def hostile_cases(d: Path) -> list[tuple[list[str], str]]:
    (d / "latin1.yaml").write_bytes(b"trainer:\n  output_dir: caf\xe9\n")
    (d / "bomb.yaml").write_text(
        'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\ntrainer: {steps: *c}\n"
    )
    (d / "dup.yaml").write_text("trainer:\n  steps: 3\n  steps: 5\n")
    (d / "empty.yaml").write_text("# nothing here\n")
    (d / "deep.yaml").write_text(f"task:\n  options: {{a: {_nest(200)}}}\n")
    (d / "deepopts.yaml").write_text("task:\n  options: " + "{a: " * 10 + "1" + "}" * 10 + "\n")
    ok = '{"example": {"numbers": [1, 2], "target": 3}, "attempt": "x"}\n'
    ex = {"numbers": [1, 2], "target": 3}
    (d / "cd_w.jsonl").write_text('{"example": {"w": "x"}, "attempt": "x"}\n')
    (d / "cd_empty.jsonl").write_text(ok + '{"example": {"numbers": [], "target": 3}, "attempt": "x"}\n')
    (d / "latin1.jsonl").write_bytes(ok.encode() + ok.encode().replace(b'"x"', b'"\xff"'))
    (d / "deep.jsonl").write_text('{"example": {"a": ' + _nest(100_000) + '}, "attempt": "x"}\n')
    (d / "long.jsonl").write_text(json.dumps({"example": ex, "attempt": "w " * 40_000}))
    (d / "huge.jsonl").write_text(json.dumps({"example": ex, "attempt": "w " * 10**6}))
    user = d / "users_dir"  # a directory r3fast never used, full of the user's files
    for name in ("vacation.png", "eval_results_2024.json", "config.json", "metrics.jsonl", "report.md"):
        (user / name).parent.mkdir(parents=True, exist_ok=True)
        (user / name).write_text("mine")
    (user / "checkpoints").mkdir()
    (user / "checkpoints" / "my_model.bin").write_text("mine")
    tiny = d / "tiny_model"
    tiny.mkdir()
    (tiny / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 2048}')
    out = str(d / "run")
    train = ["train", "--trainer.output_dir", out]
    return [
        ([*train, "--config", str(d / "latin1.yaml")], "latin1.yaml: not UTF-8 (byte offset 26)"),
        ([*train, "--config", str(d / "bomb.yaml")], "YAML aliases (*a) are not accepted"),
        ([*train, "--config", str(d / "dup.yaml")], "duplicate key 'steps'"),
        ([*train, "--config", str(d / "empty.yaml")], "empty.yaml: the config is empty"),
        ([*train, "--config", str(d / "deep.yaml")], "nested deeper than 32 levels"),
        ([*train, "--config", str(d / "deepopts.yaml")], "task.options must be a mapping nested at most 8"),
        ([*train, "--task.options", "{num_numbers: 100000}"], "num_numbers must be an int or (lo, hi)"),
        ([*train, "--rollout.group_size", "1000000000"], "rollout.group_size must be in [2, 512]"),
        ([*train, "--data.failures_per_step", "1000000000"], "data.failures_per_step must be <= 4096"),
        ([*train, "--trainer.seed", str(2**70)], "seed: 1180591620717411303424 does not fit"),
        ([*train, "--trainer.seed", str(2**63)], "--trainer.seed: 9223372036854775808 does not fit"),
        (["train", "--trainer.output_dir", "x" * 300], "too long (a name over 255 bytes"),
        (["train", "--trainer.output_dir", "runs/a\0b"], "(no NUL byte)"),
        (["train", "--trainer.output_dir", "/", "--overwrite"], "is the file system root"),
        (["train", "--trainer.output_dir", str(d), "--overwrite"], "is the home directory"),
        (["train", "--trainer.output_dir", str(d.parent), "--overwrite"], "a parent of the home directory"),
        (["train", "--trainer.output_dir", str(user), "--overwrite"], "was not created by r3fast"),
        ([*train, "--data.failures", str(d / "cd_w.jsonl")], "cd_w.jsonl:1: example does not fit task"),
        ([*train, "--data.failures", str(d / "cd_empty.jsonl")], "cd_empty.jsonl:2: example does not fit"),
        ([*train, "--data.failures", str(d / "latin1.jsonl")], "latin1.jsonl:2: not UTF-8 (byte offset 120)"),
        ([*train, "--data.failures", str(d / "deep.jsonl")], "deep.jsonl:1: bad failure record: nested"),
        ([*train, "--data.failures", str(d / "long.jsonl")], "long.jsonl:1: attempt of 80000 characters"),
        ([*train, "--data.failures", str(d / "huge.jsonl")], "huge.jsonl:1: line longer than 1048576 bytes"),
        (
            [
                *train,
                "--model.name",
                str(tiny),
                "--sampler.backend",
                "vllm",
                "--sampler.max_model_len",
                "4096",
            ],
            "sampler.max_model_len 4096 exceeds the model's 2048 tokens",
        ),
    ]


def test_hostile_input_is_one_line_exit_2_before_torch(tmp_path):
    todo = hostile_cases(tmp_path)
    assert_one_line_errors(todo, tmp_path)
    user = tmp_path / "users_dir"  # refused, and nothing of the user's was touched
    assert sorted(p.name for p in user.rglob("*")) == sorted(
        ["vacation.png", "eval_results_2024.json", "config.json", "metrics.jsonl", "report.md", "checkpoints",
         "my_model.bin"]
    )  # fmt: skip
