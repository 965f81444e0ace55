"""One metrics schema (r3fast.metric_schema): every key the rollout, the learner, the loop, the
logger and the report use is defined there once, with its meaning, unit and reductions."""

from __future__ import annotations

import random

import pytest
import torch
from test_data_common import random_groups, tiny_model

from r3fast.config import LossConfig
from r3fast.data import pack_step
from r3fast.guard import NonFiniteGuard
from r3fast.learner import NO_UPDATE, Learner
from r3fast.loss import SpanLoss
from r3fast.metric_schema import METRICS, check_keys, no_update, reduce_over_ranks, rollout_keys
from r3fast.metrics import MetricsLogger
from r3fast.model import use_packed_attention
from r3fast.report import CURVES, PLOTS
from r3fast.rollout import Group, RolloutResult
from r3fast.sampling import Completion
from r3fast.tasks.base import verify_counts


def test_every_entry_is_complete():
    for key, m in METRICS.items():
        assert m.key == key and m.meaning and m.unit and m.within, key
        assert m.ranks in ("sum", "mean", "max", "rank0"), key


def test_rollout_metrics_are_the_schema_rollout_keys():
    comp = Completion(text="x", token_ids=[1, 2], logprobs=[-1.0, -1.0], finish_reason="length")
    group = Group(failure=None, prompt_ids=[1], reflections=[comp, comp], retries=["a", "b"],
                  rewards=[0.0, 1.0], advantages=[-1.0, 1.0])  # fmt: skip
    keys = set(RolloutResult(groups=[group]).metrics()) | set(verify_counts(None))
    assert keys == set(rollout_keys())


def test_ranks_reduce_by_the_schema_rule():
    local = {"groups": 3, "reward_mean": 0.5, "verify_timeouts": 1, "lr": 1e-3}
    out = reduce_over_ranks(local, lambda xs: [2 * x for x in xs], world=2)  # two equal ranks
    assert out == {"groups": 6, "reward_mean": 0.5, "verify_timeouts": 2, "lr": 1e-3}
    assert isinstance(out["groups"], int)


def test_learner_metrics_are_in_the_schema():
    assert NO_UPDATE == no_update() and NO_UPDATE["attention_backend"] == ""
    cfg = LossConfig(loss_type="dapo", beta=0.0, impl="torch")
    model = use_packed_attention(tiny_model("llama")).train()
    learner = Learner(model=model, ref_model=None, loss=SpanLoss(cfg, temperature=1.0, max_span_tokens=30),
                      optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), guard=NonFiniteGuard(3),
                      device=torch.device("cpu"), grad_clip=1.0, num_iterations=2,
                      is_correction="token_truncate")  # fmt: skip
    seqs = random_groups(random.Random(1), 2, 4, (10, 20), (5, 12))
    for s in seqs:
        s.sampler_logp = [-1.0] * (s.span_end - s.span_start)
    plan, rows = pack_step(seqs, max_tokens=64, shared_prefix=False, seed=0, step=0)
    metrics = learner.step(plan, rows)
    check_keys(metrics)
    assert set(NO_UPDATE) <= set(metrics) and "is_capped_frac" in metrics


def test_report_and_logger_read_the_schema(tmp_path):
    named = [keys for keys, _ in [*PLOTS.values(), *CURVES]]
    plotted = {k for keys in named for k in ((keys,) if isinstance(keys, str) else keys)}
    assert plotted <= set(METRICS)
    logger = MetricsLogger(tmp_path, report_to=["jsonl"])
    logger.log(1, {"loss": 0.5, "reward_mean": 1.0})
    with pytest.raises(KeyError, match="not in r3fast.metric_schema"):
        logger.log(2, {"loss_typo": 0.5})
    logger.close()
