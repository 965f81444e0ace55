"""The trainer end to end on a tiny model: artefacts, resume exactness, learning direction."""

from __future__ import annotations

import json

import pytest
import torch

from r3fast import R3Config, R3Trainer
from r3fast.config import apply_overrides
from r3fast.metric_schema import PHASES
from r3fast.tasks import make_task
from tests.conftest import tiny_llama


def parity_task():
    """A task a random tiny model gets right about half the time: reward signal in most groups."""
    return make_task(
        "parity",
        build_prompt=lambda ex: [{"role": "user", "content": f"Say one word about {ex['w']}."}],
        verify=lambda ex, text: len(text) % 2 == 0,
        examples=[{"w": f"topic {i}"} for i in range(64)],
    )


def tiny_config(tmp_path, **over) -> R3Config:
    cfg = R3Config()
    apply_overrides(
        cfg,
        [
            "--rollout.group_size",
            "4",
            "--sampler.max_answer_tokens",
            "6",
            "--sampler.max_reflection_tokens",
            "8",
            "--data.online",
            "true",
            "--data.failures_per_step",
            "2",
            "--data.mine_tries",
            "1",
            "--data.max_tokens",
            "256",
            "--optim.lr",
            "1e-3",
            "--eval.n",
            "4",
            "--trainer.steps",
            "2",
            "--checkpoint.every",
            "1",
            "--metrics.progress",
            "false",
            "--metrics.tensorboard",
            "false",
            "--trainer.output_dir",
            str(tmp_path / "run"),
            "--model.device",
            "cpu",
        ],
    )
    for k, v in over.items():
        apply_overrides(cfg, [f"--{k}", str(v)])
    return cfg


def make_trainer(cfg, tok, **kw) -> R3Trainer:
    return R3Trainer(cfg, task=parity_task(), model=tiny_llama(len(tok)), tokenizer=tok, **kw)


def test_train_writes_every_artefact(tmp_path, smol_tokenizer):
    cfg = tiny_config(tmp_path)
    summary = make_trainer(cfg, smol_tokenizer).train()
    run = tmp_path / "run"
    for name in (
        "metrics.jsonl",
        "report.md",
        "summary.json",
        "config.json",
        "eval_vanilla_greedy.json",
        "eval_trained_greedy.json",
        "r3_effect.json",
        "learning_curves.png",
        "reward.png",
        "retry_success.png",
        "reflection_length.png",
        "phases.png",
        "final/config.json",
        "final/model.safetensors",
        "checkpoints/latest",
    ):
        assert (run / name).exists(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert any(m["updated"] and m["span_tokens"] > 0 for m in metrics), metrics  # the learner really ran
    for key in (
        "reward_mean",
        "frac_groups_with_signal",
        "retry_success",
        "reflection_len_mean",
        "loss",
        "kl",
        "clip_frac",
        "entropy",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "rollout_s",
        "learner_s",
        "sync_s",
        "peak_memory_mb",
    ):
        assert key in metrics[-1], key
    assert "| decoding | n | vanilla 1st |" in (run / "report.md").read_text()
    assert "Time per phase over the steps" in (run / "report.md").read_text()
    for m in metrics:  # the per-phase profile: tokens as the rollout and the learner count them
        refl = m["groups"] * cfg.rollout.group_size
        assert m["phase_reflect_tokens"] == round(m["reflection_len_mean"] * refl), m
        assert m["phase_retry_tokens"] > 0 and m["phase_verify_tokens"] == refl, m
        assert m["phase_forward_backward_tokens"] == m["tokens"] * m["updates"], m
        inside = sum(m[f"phase_{n}_s"] for n in PHASES if n not in ("eval", "checkpoint"))
        assert 0 < inside <= m["step_s"], m  # the step's phases lie within its wall-clock window
    assert metrics[0]["phase_checkpoint_s"] == 0 < metrics[1]["phase_checkpoint_s"]  # saved after step 1
    effect = json.loads((run / "r3_effect.json").read_text())
    keys = (
        "n",
        "vanilla_first",
        "vanilla_second",
        "trained_first",
        "trained_second",
        "diff_first",
        "diff_second",
        "diff_first_ci",
        "diff_second_ci",
        "config",
        "versions",
        "date",
        "wall_seconds",
    )
    for key in keys:
        assert key in effect, key
    assert effect["n"] == cfg.eval.n and effect["decoding"] == "greedy"
    assert summary["steps"] == 2
    from r3fast.models import load_model

    model, _ = load_model(run / "final")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_resume_is_exact(tmp_path, smol_tokenizer):
    straight = make_trainer(
        tiny_config(tmp_path / "a", **{"trainer.steps": 4, "eval.n": 0}), smol_tokenizer
    )
    straight.train()

    class Killed(Exception):
        pass

    def kill_after_two(step, metrics):
        if step == 2:
            raise Killed

    cfg = tiny_config(tmp_path / "b", **{"trainer.steps": 4, "eval.n": 0})
    with pytest.raises(Killed):
        make_trainer(cfg, smol_tokenizer, callbacks=[kill_after_two]).train()
    resumed = make_trainer(cfg, smol_tokenizer, resume=True)
    assert resumed.step == 2
    resumed.train()
    init = tiny_llama(len(smol_tokenizer)).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in straight.model.state_dict().items())  # it trained
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]


def test_steps_move_logprobs_with_the_advantage(smol_tokenizer):
    """A few optimiser steps on one fixed batch: positive-advantage reflections get likelier."""
    from r3fast.config import LossConfig
    from r3fast.data import TrainSequence, pack_sequences, plan_step
    from r3fast.loss import SpanLoss

    model = tiny_llama(len(smol_tokenizer)).train()
    g = torch.Generator().manual_seed(0)
    seqs = []
    for adv in [1.0, -1.0, 1.0, -1.0]:
        ids = torch.randint(10, 1000, (20,), generator=g).tolist()
        seqs.append(TrainSequence(input_ids=ids, span_start=12, span_end=20, advantage=adv, group_id=0))
    loss = SpanLoss(LossConfig(beta=0.0, impl="torch"), temperature=1.0, max_span_tokens=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    plan = plan_step(seqs)
    row = pack_sequences(seqs, 256)[0]

    def seq_logp() -> torch.Tensor:
        lp = loss.logprobs(model, row)
        owner = row.seq_index[row.span_mask]
        return torch.stack([lp[owner == i].sum() for i in range(len(seqs))])

    before = seq_logp()
    for _ in range(5):
        out, _ = loss(model, row, plan)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    delta = seq_logp() - before
    assert (delta[[0, 2]] > 0).all() and (delta[[1, 3]] < 0).all(), delta


# bnpo normalises each micro-batch on its own (TRL), so packing changes it by design.
@pytest.mark.parametrize("shared_prefix", [False, True])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_packed_loss_equals_unpacked(smol_tokenizer, loss_type, shared_prefix):
    """One packed row (plain or shared-prefix) vs one row per sequence, same step normaliser:
    same loss, same gradients, through the trainer's packed-attention path."""
    from r3fast.config import LossConfig
    from r3fast.data import TrainSequence, pack_groups, pack_sequences, plan_step
    from r3fast.loss import SpanLoss
    from r3fast.model import use_packed_attention

    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in (12, 9)]
    seqs = [  # two groups of two: each pair shares its prefix, as the G reflections of a group do
        TrainSequence(
            input_ids=prefixes[i // 2] + torch.randint(10, 1000, (k,), generator=g).tolist(),
            span_start=len(prefixes[i // 2]),
            span_end=len(prefixes[i // 2]) + k,
            advantage=a,
            group_id=i // 2,
        )
        for i, (k, a) in enumerate([(5, 0.7), (9, -0.7), (3, 1.2), (12, -1.2)])
    ]
    plan = plan_step(seqs)
    loss = SpanLoss(
        LossConfig(loss_type=loss_type, beta=0.0, impl="torch"), temperature=0.9, max_span_tokens=12
    )

    def run(rows):
        model = use_packed_attention(tiny_llama(len(smol_tokenizer)))
        total = 0.0
        for row in rows:
            out, _ = loss(model, row, plan)
            out.loss.backward()
            total += float(out.loss.detach())
        return total, [p.grad.clone() for p in model.parameters()]

    packed = (pack_groups if shared_prefix else pack_sequences)(seqs, 256)
    assert len(packed) == 1
    if shared_prefix:
        assert packed[0].num_tokens == sum(len(s.input_ids) for s in seqs) - 12 - 9 + 2  # prefixes once
    singles = [pack_sequences([s], 256)[0] for s in seqs]
    lp, gp = run(packed)
    lu, gu = run(singles)
    assert lp == pytest.approx(lu, rel=1e-5, abs=1e-7)
    for a, b in zip(gp, gu):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
