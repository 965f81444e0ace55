"""A user's JSONL of prompts and answers trains from a YAML file alone: `task.name: dataset`, a
tiny local model, the run's first line on screen is r3fast's, and final/ and each checkpoint carry
a model card. Nothing is downloaded (the model is a tiny random Llama saved next to SmolLM2's
tokenizer)."""

from __future__ import annotations

import json

import pytest
import yaml

from r3fast import cli
from r3fast.ckpt_verify import check_checkpoint
from r3fast.model_card import model_card
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama(len(smol_tokenizer)).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def run_yaml(tmp_path, tiny_dir, **trainer) -> dict:
    rows = [{"question": f"What is {i} times 3?", "answer": 3 * i} for i in range(30)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"name": str(tiny_dir), "device": "cpu"},
        "task": {
            "name": "dataset",
            "options": {"path": str(tmp_path / "qa.jsonl"), "prompt": "question", "verifier": "numeric"},
        },
        "sampler": {"group_size": 2, "max_answer_tokens": 4, "max_reflection_tokens": 4},
        "data": {"failures_per_step": 1, "mine_tries": 1, "max_tokens": 512},
        "trainer": {"steps": 2, "save_every": 1, "eval_n": 2, "tensorboard": False, **trainer},
    }
    config["trainer"]["output_dir"] = str(tmp_path / "run")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return config


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_jsonl_trains_from_yaml_alone_with_a_model_card(tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_yaml(tmp_path, tiny_dir)
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"r3fast train: model={tiny_dir} task=dataset device=cpu sampler=hf run_dir=")
    run = tmp_path / "run"
    assert (run / "report.md").is_file() and json.loads((run / "summary.json").read_text())["steps"] == 2
    card = (run / "final" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and "task:qa" in meta["tags"] and "r3fast" in meta["tags"]
    assert "base_model" not in meta  # a local directory is no hub id
    assert "| decoding | n | vanilla 1st" in card and "## Training config" in card and "- torch:" in card
    (ckpt,) = sorted((run / "checkpoints").glob("step_*"))[-1:]
    assert "checkpoint at step 2 of 2" in (ckpt / "README.md").read_text()
    assert check_checkpoint(ckpt, run) is None  # the card is sealed with the checkpoint's other files


def test_push_to_hub_offline_is_one_line_before_training(tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_yaml(tmp_path, tiny_dir, push_to_hub="my-org/r3-qa")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--config", str(tmp_path / "run.yaml")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "HF_HUB_OFFLINE is set" in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="like 'org/name'") as e:
        cli.main(["train", "--config", str(tmp_path / "run.yaml"), "--trainer.push_to_hub", "no-org"])
    assert e.value.code == 2


def test_model_card_of_an_embedded_base_with_effects():
    from r3fast.config import R3Config

    e = {
        "n": 10,
        **{k: 0.5 for k in ("vanilla_first", "vanilla_second", "trained_first", "trained_second")},
        **{
            f"{k}_ci": [0.2, 0.8]
            for k in ("vanilla_first", "vanilla_second", "trained_first", "trained_second")
        },
        "diff_first": 0.0,
        "diff_first_ci": [-0.1, 0.1],
        "diff_second": 0.1,
        "diff_second_ci": [0.0, 0.2],
        "second_given_first_failed": {"vanilla": {"acc": 0.1}, "trained": {"acc": 0.3}},
    }
    text = model_card(R3Config().to_dict(), task_name="countdown", effects={"greedy": e}, repo_id="o/m")
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "task:countdown" in meta["tags"]
    assert "50.0 [20.0, 80.0]" in text and 'from_pretrained("o/m")' in text
    assert "Not measured (eval.n = 0)" in model_card(
        {**R3Config().to_dict(), "eval": {**R3Config().to_dict()["eval"], "n": 0}}, task_name="t"
    )
