"""Config files and overrides; model-name resolution."""

from __future__ import annotations

import pytest

from r3fast.config import R3Config, apply_overrides, load_config
from r3fast.models import resolve_model_path
from r3fast.presets import PRESETS


def test_yaml_and_toml_configs(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("optim:\n  lr: 1.0e-5\nsampler:\n  group_size: 4\ntask:\n  options: {num_numbers: 2}\n")
    cfg = load_config(y)
    assert cfg.optim.lr == 1e-5 and cfg.sampler.group_size == 4 and cfg.task.options == {"num_numbers": 2}
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
