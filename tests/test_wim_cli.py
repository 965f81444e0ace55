"""`r3fast wim` end to end on a tiny saved model, and its refusal of bad task arguments."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

from r3fast.cli import main


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_wim_command_writes_table_and_json(tmp_path, smol_tokenizer, capsys, restore_threads):
    model_dir = tmp_path / "tiny"
    tiny_llama(len(smol_tokenizer)).save_pretrained(model_dir)
    smol_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "wim.json"
    args = ["wim", "--model", str(model_dir), "--task", "multihop", "cwe", "--n", "2"]
    args += ["--context-tokens", "400", "--task-options", "{cwe: {num_common: 2, common_freq: 8}}"]
    args += ["--segment-tokens", "128", "--margin-tokens", "2", "--answer-tokens", "2"]
    assert main([*args, "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "gap" in printed
    data = json.loads(out.read_text())
    assert set(data["tasks"]) == {"multihop", "cwe"}
    assert data["tasks"]["cwe"]["summary"]["metric"] == "f1" and len(data["tasks"]["cwe"]["records"]) == 2
    assert data["environment"]["torch_threads"] == 1 and data["environment"]["wall_s"] > 0


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--task", "nope"], "unknown task"),
        (["--task", "cwe", "--context-tokens", "100"], "fewer than"),
        (["--task", "multihop", "--task-options", "{chains: 0}"], "chains"),
    ],
)
def test_wim_command_refuses_bad_tasks_before_loading(extra, match):
    with pytest.raises(SystemExit) as e:
        main(["wim", "--model", "no/such-model", *extra])
    assert e.value.code == 2 and match in str(e.value)
