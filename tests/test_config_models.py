"""Config files and overrides; model-name resolution."""

from __future__ import annotations

import dataclasses
import json

import pytest

from r3fast.config import R3Config, apply_overrides, load_config
from r3fast.models import resolve_model_path
from r3fast.presets import PRESETS


def test_yaml_and_toml_configs(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("optim:\n  lr: 1.0e-5\nsampler:\n  group_size: 4\ntask:\n  options: {num_numbers: 2}\n")
    cfg = load_config(y)
    assert cfg.optim.lr == 1e-5 and cfg.rollout.group_size == 4 and cfg.task.options == {"num_numbers": 2}
    t = tmp_path / "a.toml"
    t.write_text('[loss]\nloss_type = "grpo"\nbeta = 0.0\n')
    assert load_config(t).loss.loss_type == "grpo"
    t.write_text("[loss]\nbogus = 1\n")
    with pytest.raises(ValueError, match=r"a\.toml: unknown field"):
        load_config(t)


def test_overrides_coerce_and_validate():
    cfg = apply_overrides(
        R3Config(), ["--optim.lr", "1e-6", "--data.online=true", "--optim.betas", "[0.9, 0.95]"]
    )
    assert cfg.optim.lr == 1e-6 and cfg.data.online is True and cfg.optim.betas == (0.9, 0.95)
    for bad, msg in (
        (["--trainer.steps", "x"], "cannot read"),
        (["--nosuch.x", "1"], "unknown section"),
        (["--loss.loss_type", "ppo"], "loss_type"),
        (["--sampler.group_size", "1"], "group_size"),
    ):
        with pytest.raises(ValueError, match=msg):
            apply_overrides(R3Config(), bad)


def test_presets_build():
    for make in PRESETS.values():
        assert isinstance(make(), R3Config)


def test_unknown_model_name_lists_what_is_accepted(monkeypatch, tmp_path):
    # Offline with an empty hub cache: an org-less name that is neither embedded nor a directory
    # can only be a typo (online, the hub alone could say; see test_hub_ids_without_an_org).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        resolve_model_path("no-such-model")
    assert resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"


def test_the_fields_free_on_resume_come_from_the_field_metadata():
    """The resume check reads each field's own metadata (no list of names elsewhere); the set is
    the one the run-directory rules have always allowed."""
    from r3fast.config import may_change_on_resume
    from r3fast.rundir import MAY_CHANGE

    free = {
        "trainer": ["steps", "output_dir", "max_nonfinite_steps", "push_to_hub"],
        "checkpoint": ["every", "keep"],
        "eval": ["every", "every_n"],
        "metrics": ["report_to", "wandb_project", "progress", "tensorboard"],
        "sampler": [
            "max_batch_size",
            "share_prefix",
            "gpu_memory_utilization",
            "sync_bucket_mb",
            "sleep_level",
            "max_model_len",
        ],
        "model": ["device"],
        "loss": ["impl"],
        "task": ["verify_timeout"],
    }
    want = {f"{section}.{name}" for section, names in free.items() for name in names}
    assert MAY_CHANGE == may_change_on_resume() == want


def test_readme_lists_the_fields_free_on_resume():
    """The README's list is the metadata's set, so the two cannot drift apart."""
    import re
    from pathlib import Path

    from r3fast.config import may_change_on_resume

    text = (Path(__file__).parents[1] / "README.md").read_text()
    listed = text.split("Free to change:", 1)[1].split("Any other difference", 1)[0]
    names = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", listed))
    assert names == set(may_change_on_resume())


def test_every_old_name_reads_as_its_new_field():
    """Each RENAMED entry, written the old way in a file and as a flag, lands in its new field."""
    from r3fast.config import RENAMED, SECTIONS
    from r3fast.config_base import note

    values = {"group_size": 4, "mask_truncated_completions": True, "num_iterations": 2,
              "is_correction": "token_mask", "is_clip_min": 0.5, "is_clip_max": 2.0, "grad_clip": 0.5,
              "save_every": 3, "keep_checkpoints": 4, "eval_n": 5, "eval_temperatures": [0.9],
              "eval_every": 6, "eval_every_n": 7, "report_to": ["jsonl"], "wandb_project": "p",
              "progress": False, "tensorboard": False}  # fmt: skip
    for old, new in RENAMED.items():
        (src, name), (dst, field_name) = old.split("."), new.split(".")
        assert dst in SECTIONS and field_name in {f.name for f in dataclasses.fields(SECTIONS[dst])}
        cfg = R3Config.from_dict({src: {name: values[name]}})
        assert getattr(getattr(cfg, dst), field_name) == values[name], old
        assert cfg.deprecations == [note(old, new)]
        text = json.dumps(values[name]) if not isinstance(values[name], str) else values[name]
        flagged = apply_overrides(R3Config(), [f"--{old}", text])
        assert getattr(getattr(flagged, dst), field_name) == values[name], old
    with pytest.raises(ValueError, match=r"trainer\.eval_every_n must be >= 1"):  # named as written
        apply_overrides(R3Config(), ["--trainer.eval_every_n", "0"])
    assert R3Config.from_dict({"loss": {"impl": "triton_splitv"}}).loss.impl == "triton"


def test_old_field_names_still_work_with_a_note(tmp_path):
    """Fields moved to their component's section (config.RENAMED): a config file, a flag and a saved
    run with the old names read as the new ones, one note each; both names at once is an error."""
    from r3fast.config import RENAMED
    from r3fast.rundir import config_changes

    assert RENAMED["sampler.group_size"] == "rollout.group_size"
    y = tmp_path / "old.yaml"
    y.write_text("sampler: {group_size: 4}\nloss: {mask_truncated_completions: true}\n")
    cfg = load_config(y)
    assert cfg.rollout.group_size == 4 and cfg.rollout.mask_truncated_completions is True
    assert cfg.deprecations == [
        "note: sampler.group_size is now rollout.group_size (the old name still works; rename it in "
        "your config)",
        "note: loss.mask_truncated_completions is now rollout.mask_truncated_completions (the old name "
        "still works; rename it in your config)",
    ]
    assert "group_size" not in cfg.to_dict()["sampler"]
    flagged = apply_overrides(R3Config(), ["--sampler.group_size", "6"])
    assert flagged.rollout.group_size == 6 and len(flagged.deprecations) == 1
    with pytest.raises(ValueError, match=r"sampler\.group_size must be in \[2, 512\]"):
        apply_overrides(R3Config(), ["--sampler.group_size", "1"])  # named as written
    with pytest.raises(ValueError, match="both given"):
        R3Config.from_dict({"sampler": {"group_size": 4}, "rollout": {"group_size": 4}})
    saved = R3Config().to_dict()
    saved["sampler"]["group_size"] = saved["rollout"].pop("group_size")  # a run saved before the move
    assert config_changes(saved, R3Config().to_dict()) == []
    new = R3Config()
    new.rollout.group_size = 4
    assert config_changes(saved, new.to_dict()) == [("rollout.group_size", 8, 4)]


def test_cli_prints_the_note_once_config_is_valid(tmp_path, capsys):
    from r3fast import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--sampler.group_size", "1", "--trainer.output_dir", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert "note:" not in captured.out + captured.err and "sampler.group_size must be" in captured.err
