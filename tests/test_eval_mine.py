"""`r3fast eval` / `r3fast mine` and the failure-set file format."""

from __future__ import annotations

import dataclasses
import json

import pytest

from r3fast import cli
from r3fast.evaluate import evaluate
from r3fast.failure_file import Failure, read_failures
from r3fast.mining import mine_failures, write_jsonl_atomic
from r3fast.sampling import HFSampler, SamplingParams
from r3fast.tasks import get_task
from tests.conftest import tiny_llama


def test_evaluate_counts_and_records(smol_tokenizer):
    task = get_task("countdown", num_numbers=2, number_range=(1, 10), target_range=(1, 100))
    examples = task.dataset(3, seed=0, split="eval")
    sampler = HFSampler(tiny_llama(len(smol_tokenizer)), smol_tokenizer)
    p = SamplingParams(temperature=1.0, max_new_tokens=6, seed=0)
    res = evaluate(
        sampler, smol_tokenizer, task, examples, answer_params=p, reflection_params=p, progress=False
    )
    assert res.n == 3 and 0 <= res.first_correct <= res.second_correct <= 3
    for r in res.records:
        assert set(r) >= {"example", "first_try", "first_ok"}
        if not r["first_ok"]:
            assert set(r) >= {"reflection", "second_try", "second_ok"}


def test_mine_roundtrip_and_bad_lines(tmp_path, smol_tokenizer):
    task = get_task("countdown", num_numbers=2, number_range=(1, 10), target_range=(1, 100))
    sampler = HFSampler(tiny_llama(len(smol_tokenizer)), smol_tokenizer)
    res = mine_failures(
        sampler,
        smol_tokenizer,
        task,
        task.dataset(4, seed=0),
        tries=2,
        model_name="tiny",
        params=SamplingParams(temperature=1.0, max_new_tokens=5, seed=1),
        progress=False,
    )
    assert res.attempts == 8 and len(res.failures) == 8 - res.correct_attempts
    rec = res.records[0]
    assert rec["model"] == "tiny" and rec["sampling"]["temperature"] == 1.0 and rec["attempt_ids"]
    path = tmp_path / "f.jsonl"
    write_jsonl_atomic(path, res.records)
    assert read_failures(path) == res.failures
    path.write_text(path.read_text() + '{"example": {"numbers": [1]}, "attempt": 3}\n')
    with pytest.raises(ValueError, match=rf"f\.jsonl:{len(res.records) + 1}:"):
        read_failures(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"f\.jsonl:1:"):
        read_failures(path)


def test_failure_record_round_trips_every_field(tmp_path):
    """write -> read gives the same Failure, stop ids and attempt ids included; a hand-written
    record needs only example and attempt; unknown or mistyped fields name the line."""
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=12, seed=3, stop_token_ids=[2, 7])
    failure = Failure(
        example={"numbers": [3, 4], "target": 7},
        attempt="3 * 4",
        attempt_ids=[18, 1290, 36, 2],
        example_index=5,
        try_index=1,
        model="tiny",
        task="countdown",
        sampling=dataclasses.asdict(params),
    )
    path = tmp_path / "f.jsonl"
    write_jsonl_atomic(path, [failure.to_record(), {"example": {"n": 1}, "attempt": "x"}])
    back, minimal = read_failures(path)
    assert back == failure and back.sampling["stop_token_ids"] == [2, 7]
    assert SamplingParams(**back.sampling) == params
    assert minimal == Failure(example={"n": 1}, attempt="x")
    for bad, why in [
        ({**failure.to_record(), "tries": 2}, "unknown field"),
        ({**failure.to_record(), "attempt_ids": ["a"]}, "attempt_ids"),
        ({"attempt": "x"}, "missing field 'example'"),
    ]:
        write_jsonl_atomic(path, [failure.to_record(), bad])
        with pytest.raises(ValueError, match=rf"f\.jsonl:2: bad failure record: .*{why}"):
            read_failures(path)


@pytest.mark.slow
def test_cli_eval_and_mine_on_smollm2(tmp_path, capsys):
    """The real embedded model, a handful of examples: the commands run and write their files."""
    out = tmp_path / "eval.json"
    task = ["--task", "countdown", "--task-options", "{num_numbers: 2, number_range: [1, 10]}", "--n", "2"]
    assert (
        cli.main(
            [
                "eval",
                *task,
                "--max-answer-tokens",
                "16",
                "--max-reflection-tokens",
                "16",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "1st try" in printed and "2nd try" in printed
    data = json.loads(out.read_text())
    assert data["summary"]["n"] == 2 and len(data["records"]) == 2
    fails = tmp_path / "fails.jsonl"
    assert (
        cli.main(
            [
                "mine",
                *task,
                "--tries",
                "2",
                "--max-answer-tokens",
                "12",
                "--device",
                "cpu",
                "--out",
                str(fails),
            ]
        )
        == 0
    )
    assert len(read_failures(fails)) >= 1  # SmolLM2 fails most of these


def test_cli_rejects_bad_overrides():
    with pytest.raises(SystemExit, match="unknown field"):
        cli.main(["train", "--preset", "countdown-demo", "--optim.nope", "1"])


def test_cli_eval_run_reproduces_the_trained_evaluation(tmp_path, smol_tokenizer, capsys):
    """`r3fast eval --run DIR` is the trainer's own evaluation of DIR/final: same examples, seed
    streams, chunking, caps and prompts, so every text and count of eval_trained_*.json comes back."""
    from r3fast import R3Trainer
    from r3fast.config import apply_overrides
    from tests.test_trainer import tiny_config

    cfg = tiny_config(tmp_path, **{"trainer.steps": 1, "checkpoint.every": 0, "sampler.chunk_size": 3})
    apply_overrides(cfg, ["--eval.temperatures", "[0.0, 0.9]", "--task.options", "{num_numbers: 2}"])
    R3Trainer(cfg, model=tiny_llama(len(smol_tokenizer)), tokenizer=smol_tokenizer).train()
    run = tmp_path / "run"
    for label, flags in (("greedy", []), ("T0.9", ["--temperature", "0.9"])):
        saved = json.loads((run / f"eval_trained_{label}.json").read_text())
        out = tmp_path / f"again_{label}.json"
        assert cli.main(["eval", "--run", str(run), *flags, "--out", str(out)]) == 0
        again = json.loads(out.read_text())
        assert again["records"] == saved["records"]
        timeless = ({k: v for k, v in d["summary"].items() if k != "seconds"} for d in (again, saved))
        assert next(timeless) == next(timeless)
        assert "not the run's own evaluation" not in capsys.readouterr().out
    assert cli.main(["eval", "--run", str(run), "--n", "2", "--out", str(tmp_path / "x.json")]) == 0
    assert "not the run's own evaluation (changed: eval.n)" in capsys.readouterr().out
    # --config: the same protocol under a config file (here the run's own, pointed at final/)
    raw = json.loads((run / "config.json").read_text())
    raw["model"]["name"] = str(run / "final")
    (tmp_path / "run.yaml").write_text(json.dumps(raw))  # JSON is YAML
    out = tmp_path / "from_config.json"
    assert cli.main(["eval", "--config", str(tmp_path / "run.yaml"), "--out", str(out)]) == 0
    saved = json.loads((run / "eval_trained_greedy.json").read_text())
    assert json.loads(out.read_text())["records"] == saved["records"]
