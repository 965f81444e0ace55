"""The learner: μ updates per rollout batch (ratio and clip act from the second), the sampler/learner
mismatch correction (formula, and ~0 gap for an fp32 HF sampler), all on real tiny models."""

from __future__ import annotations

import math
import random

import pytest
import torch
from test_data_common import random_groups, tiny_model

from r3fast.config import LossConfig
from r3fast.data import TrainSequence, pack_step
from r3fast.guard import NonFiniteGuard
from r3fast.learner import Learner, correction_weights
from r3fast.loss import SpanLoss
from r3fast.model import use_packed_attention


def test_correction_weights_follow_the_formula():
    g = torch.Generator().manual_seed(3)
    m = 40
    old = -torch.rand(m, generator=g) * 4
    samp = old + torch.randn(m, generator=g) * 0.8  # a perturbed sampler
    seq = torch.sort(torch.randint(0, 6, (m,), generator=g)).values
    w, stats = correction_weights(old, samp, seq, "token_tis", 2.0)
    for t in range(m):
        assert w[t].item() == pytest.approx(min(math.exp(old[t] - samp[t]), 2.0), rel=1e-6)
    assert stats["is_capped_frac"] == pytest.approx(sum(math.exp(o - s) > 2 for o, s in zip(old, samp)) / m)
    assert stats["sampler_gap_max"] == pytest.approx((old - samp).abs().max().item(), rel=1e-6)
    w, stats = correction_weights(old, samp, seq, "sequence_mis", 2.0)
    for s in seq.unique().tolist():
        ratio = math.exp((old - samp)[seq == s].sum().item())
        want = ratio if 0.5 <= ratio <= 2.0 else 0.0  # TRL's sequence_mask: ρ inside [1/c, c], else 0
        assert w[seq == s].tolist() == pytest.approx([want] * int((seq == s).sum()), rel=1e-5), (s, ratio)
    assert 0 < stats["is_masked_seq_frac"] < 1, "the draw should mask some sequences and keep others"
    w, stats = correction_weights(old, samp, seq, "none", 2.0)
    assert w is None and "sampler_gap_mean" in stats


class RecordingLoss(SpanLoss):
    """The real span loss, recording what each call saw (logp, old_logp, advantages, loss)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = []

    def __call__(self, model, batch, plan, **kw):
        out, backend = super().__call__(model, batch, plan, **kw)
        adv = batch.advantages[batch.span_mask]
        self.calls.append((out.logp, kw.get("old_logp"), adv, out.loss.detach(), out.clip_frac, plan))
        return out, backend


def make_learner(loss: SpanLoss, *, mu: int, correction: str = "none", lr: float = 3e-2):
    model = use_packed_attention(tiny_model("llama")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    return Learner(model=model, ref_model=None, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                   device=torch.device("cpu"), grad_clip=0.0, num_iterations=mu,
                   is_correction=correction)  # fmt: skip


def test_second_iteration_ratio_and_clip_follow_the_formula():
    eps_low, eps_high = 0.1, 0.15
    cfg = LossConfig(loss_type="dapo", beta=0.0, eps_low=eps_low, eps_high=eps_high, impl="torch")
    loss = RecordingLoss(cfg, temperature=1.0, max_span_tokens=30)
    learner = make_learner(loss, mu=2)
    seqs = random_groups(random.Random(9), 2, 4, (10, 20), (5, 12))
    plan, rows = pack_step(seqs, max_tokens=64, shared_prefix=False, seed=0, step=0)
    assert len(rows) > 1  # several micro-batches: the step-wide normaliser is in play
    metrics = learner.step(plan, rows)
    assert metrics["updates"] == 2
    first, second = loss.calls[: len(rows)], loss.calls[len(rows) :]
    for logp, old, _, _, clip, _ in first:  # before any update: the learner's own log-probs, r = 1
        torch.testing.assert_close(logp, old, rtol=0, atol=1e-6)
        assert clip.item() == 0.0
    clipped = 0
    for logp, old, adv, got, clip, plan_ in second:
        ratio = torch.exp(logp.double() - old.double())
        assert (ratio - 1).abs().max() > 1e-3, "after one update the ratio must move"
        surrogate = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
        assert got.item() == pytest.approx(
            (surrogate.sum() / plan_.num_span_tokens).item(), rel=1e-5, abs=1e-7
        )
        active = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        assert clip.item() == pytest.approx(active.double().mean().item())
        clipped += int(active.sum())
    assert clipped > 0, "lr is large enough that some ratios leave the clip range"


def test_hf_sampler_in_fp32_has_no_mismatch(smol_tokenizer):
    """Sampler log-probs of an fp32 HF sampler equal the learner's own: gap ~0, weights ~1."""
    from conftest import tiny_llama

    from r3fast.sampling import HFSampler, SamplingParams

    model = use_packed_attention(tiny_llama(len(smol_tokenizer)))
    sampler = HFSampler(model, smol_tokenizer)
    prompts = [
        smol_tokenizer("Reflect on the failed attempt.")["input_ids"],
        smol_tokenizer("Why?")["input_ids"],
    ]
    params = SamplingParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=12, seed=4)
    seqs = [
        TrainSequence.from_parts(
            p, c.token_ids, advantage=float(i % 2) - 0.5, group_id=k, sampler_logp=list(c.logprobs)
        )  # fmt: skip
        for k, (p, group) in enumerate(zip(prompts, sampler.generate(prompts, params), strict=True))
        for i, c in enumerate(group)
    ]
    cfg = LossConfig(loss_type="dapo", beta=0.0, impl="torch")
    loss = SpanLoss(cfg, temperature=0.9, max_span_tokens=12)
    opt = torch.optim.AdamW(model.parameters(), lr=0)
    learner = Learner(model=model, ref_model=None, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=torch.device("cpu"), grad_clip=1.0, is_correction="token_tis")  # fmt: skip
    plan, rows = pack_step(seqs, max_tokens=256, shared_prefix=False, seed=0, step=0)
    metrics = learner.step(plan, rows)
    assert metrics["sampler_gap_max"] < 1e-4, metrics
    assert metrics["is_capped_frac"] == 0.0


def test_correction_needs_sampler_logprobs():
    cfg = LossConfig(loss_type="dapo", beta=0.0, impl="torch")
    learner = make_learner(SpanLoss(cfg, temperature=1.0, max_span_tokens=30), mu=1, correction="token_tis")
    seqs = [TrainSequence(input_ids=list(range(5, 25)), span_start=10, span_end=20, advantage=1.0)]
    plan, rows = pack_step(seqs, max_tokens=64, shared_prefix=False, seed=0, step=0)
    with pytest.raises(ValueError, match="sampler's log-probs"):
        learner.step(plan, rows)


def test_config_offers_exactly_the_kernel_loss_types():
    """The config (checked before torch loads) names the loss types the kernel's record defines."""
    import typing

    from r3fast.kernels import LOSS_TYPES

    hints = typing.get_type_hints(LossConfig)
    assert set(typing.get_args(hints["loss_type"])) == set(LOSS_TYPES)
