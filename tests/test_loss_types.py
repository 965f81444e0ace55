"""The loss-type record and its configuration: TRL 1.16's rules as one-line config errors, the
config pinned to the kernel's record, the four sampler-correction modes against the oracle's
transcription of TRL's formula, and `scale_rewards` against TRL's own std."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from r3fast.kernels import LOSS_TYPES, ObjectiveParams, span_grpo_loss
from r3fast.kernels.reference import naive_is_weights, naive_span_grpo_loss

from r3fast.config import (
    IS_ALIASES,
    RATIO_LEVELS,
    LearnerConfig,
    LossConfig,
    R3Config,
    RolloutConfig,
    apply_overrides,
)
from r3fast.errors import ConfigError
from r3fast.learner import IS_MODES, correction_weights
from r3fast.rollout import scaled_advantages


def test_config_levels_are_the_kernel_records():
    """config.py imports no torch, so it keeps its own table; it must say what the record says."""
    assert RATIO_LEVELS == {name: t.levels for name, t in LOSS_TYPES.items()}
    modes = set(typing.get_args(typing.get_type_hints(LearnerConfig)["is_correction"]))
    assert modes == set(IS_MODES) | set(IS_ALIASES)


@pytest.mark.parametrize("raw,match", [
    ({"loss": dict(loss_type="luspo")}, "luspo.*takes sequence"),
    ({"loss": dict(loss_type="vespo", importance_sampling_level="sequence")}, "vespo.*takes token"),
    *[({"loss": dict(loss_type=t, importance_sampling_level="sequence")}, f"{t}.*takes token")
      for t in ("bnpo", "dr_grpo", "dapo", "cispo")],
    ({"loss": dict(loss_type="vespo"), "learner": dict(is_correction="sequence_mask")},
     "vespo takes only token_truncate"),
    ({"learner": dict(is_correction="token_mask", is_clip_min=2.0, is_clip_max=1.5)},
     "is_clip_min 2.0 must be <="),
    ({"loss": dict(sapo_temperature_neg=0.0)}, "sapo_temperature_neg must be > 0"),
    ({"loss": dict(delta=-1.0)}, "delta must be > 0"),
])  # fmt: skip
def test_trls_rules_are_one_line_config_errors(raw, match):
    with pytest.raises(ConfigError, match=match) as e:
        R3Config.from_dict(raw)
    assert "\n" not in str(e.value)


def test_config_knobs_are_the_kernels_objective_params():
    """[loss] (no torch) repeats ObjectiveParams' knobs by name; the defaults must agree too."""
    config = LossConfig()
    for f in dataclasses.fields(ObjectiveParams):
        assert getattr(config, f.name) == f.default, f.name


def test_every_allowed_combination_configures():
    for name, levels in RATIO_LEVELS.items():
        for level in levels:
            LossConfig(loss_type=name, importance_sampling_level=level)


def test_cli_overrides_reach_the_new_fields():
    flags = ["--loss.loss_type", "luspo", "--loss.importance_sampling_level", "sequence",
             "--rollout.scale_rewards", "none", "--learner.is_correction", "token_mask",
             "--learner.is_clip_min", "0.5"]  # fmt: skip
    cfg = apply_overrides(R3Config(), flags)
    assert (cfg.loss.loss_type, cfg.loss.importance_sampling_level) == ("luspo", "sequence")
    assert cfg.rollout.scale_rewards == "none" and cfg.learner.is_clip_min == 0.5
    with pytest.raises(ConfigError, match="rollout.scale_rewards"):
        RolloutConfig(scale_rewards="std")


def test_old_correction_names_are_aliases_and_reload_to_themselves():
    c = LearnerConfig(is_correction="token_tis", is_clip_max=2.0)
    assert (c.is_correction, c.is_clip_min, c.is_clip_max) == ("token_truncate", None, 2.0)
    c = LearnerConfig(is_correction="sequence_mis", is_clip_max=2.0)
    assert (c.is_correction, c.is_clip_min, c.is_clip_max) == ("sequence_mask", 0.5, 2.0)
    assert LearnerConfig(**dataclasses.asdict(c)) == c


@pytest.mark.parametrize("mode", IS_MODES[1:])
@pytest.mark.parametrize("bounds", [(0.8, 1.25), (None, 1.25), (0.8, None)], ids=["both", "max", "min"])
def test_correction_weights_equal_trls_formula(mode, bounds, seed):
    m = 60
    old = -torch.rand(m) * 4
    samp = old + torch.randn(m) * 0.3
    seq = torch.sort(torch.randint(0, 7, (m,))).values
    w, stats = correction_weights(old, samp, seq, mode, bounds[1], bounds[0])
    want = naive_is_weights(old.double(), samp.double(), seq, mode, bounds[0], bounds[1])
    # fp32 exp of a sum of ≤ 60 fp32 gaps: relative error ≲ 60·eps·|gap| ≪ 1e-5
    torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=0.0)
    assert "sampler_gap_mean" in stats and "is_ratio_mean" in stats


def test_aliases_keep_their_old_rules(seed):
    m = 40
    old, seq = -torch.rand(m) * 4, torch.sort(torch.randint(0, 6, (m,))).values
    samp = old + torch.randn(m) * 0.8
    w, _ = correction_weights(old, samp, seq, "token_tis", 2.0)
    torch.testing.assert_close(w, torch.exp(old - samp).clamp(max=2.0))
    w, _ = correction_weights(old, samp, seq, "sequence_mis", 2.0)
    want = naive_is_weights(old.double(), samp.double(), seq, "sequence_mask", 0.5, 2.0)
    torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=0.0)


def test_scale_rewards_as_trl():
    trl_utils = pytest.importorskip("trl.trainer.utils", reason="trl is in the test extras")
    rewards = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    r = torch.tensor(rewards, dtype=torch.float64)
    mean = r.mean(1, keepdim=True)
    group_std = trl_utils.nanstd(r, dim=1).unsqueeze(1)  # TRL's own (unbiased) std
    batch_std = trl_utils.nanstd(r.flatten())
    want = {"group": (r - mean) / (group_std + 1e-4), "batch": (r - mean) / (batch_std + 1e-4),
            "none": r - mean}  # fmt: skip
    for scale, expected in want.items():
        got = torch.tensor(scaled_advantages(rewards, scale), dtype=torch.float64)
        # TRL's Bessel factor count/(count − 1) is computed in fp32 (int64 / int64): its std carries a
        # relative error ≤ eps32 ≈ 6e-8, ours is exact in fp64
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12, msg=scale)
    with pytest.raises(ValueError, match="scale_rewards"):
        scaled_advantages(rewards, "std")


def _problem():
    n, h, v = 23, 16, 51
    mask = torch.rand(n) < 0.7
    seq_ids = torch.sort(torch.randint(0, 3, (n,))).values
    return dict(hidden=torch.randn(n, h), weight=torch.randn(v, h) * 0.4, targets=torch.randint(0, v, (n,)),
                mask=mask, advantages=torch.randn(n), seq_ids=seq_ids)  # fmt: skip


@pytest.mark.parametrize("kw,match", [
    (dict(loss_type="dapo", ratio_level="sequence"), "dapo.*takes ratio_level 'token'"),
    (dict(loss_type="luspo"), "luspo.*takes ratio_level 'sequence'"),
    (dict(loss_type="grpo", ratio_level="seq"), "ratio_level must be one of"),
    (dict(loss_type="vespo", seq_ids=None), "needs seq_ids"),
    (dict(loss_type="sapo", params=ObjectiveParams(sapo_temperature_pos=0.0)), "sapo temperatures"),
])  # fmt: skip
def test_kernel_entry_refuses_what_the_record_refuses(kw, match, seed):
    p = _problem()
    with pytest.raises(ValueError, match=match):
        span_grpo_loss(**{**p, **kw}, impl="torch")


def test_objective_knobs_reach_the_kernel(seed):
    """Non-default sapo τ± / vespo k, λ / delta change the loss, exactly as the oracle says."""
    p = _problem()
    m = int(p["mask"].sum())
    exact = naive_span_grpo_loss(**p, compute_dtype=torch.float64)
    old = (exact.logp + 0.4 * torch.randn(m)).float()
    knobs = ObjectiveParams(delta=1.3, sapo_temperature_pos=0.5, sapo_temperature_neg=2.0, vespo_k_pos=1.5,
                            vespo_lambda_pos=2.5, vespo_k_neg=2.5, vespo_lambda_neg=1.5)  # fmt: skip
    for loss_type in ("grpo", "sapo", "vespo"):
        got = span_grpo_loss(**p, old_logp=old, loss_type=loss_type, params=knobs, impl="torch").loss
        default = span_grpo_loss(**p, old_logp=old, loss_type=loss_type, impl="torch").loss
        want = naive_span_grpo_loss(**p, old_logp=old, loss_type=loss_type, params=knobs,
                                    compute_dtype=torch.float64).loss  # fmt: skip
        assert got.item() != default.item(), loss_type
        # fp32 vs fp64 over ≤ 23 terms of size ≲ max|z| ≈ 10: ≲ 23·10·eps ≈ 3e-5 absolute
        assert abs(got.item() - want.item()) <= 3e-5, loss_type
