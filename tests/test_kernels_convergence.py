"""Convergence: a tiny model trained a few steps with each span-loss implementation gives the same
loss and span log-probs at every step (Liger's habit). With one update per batch the ratio is 1 and
the surrogate's value is −mean(A) whatever the weights, so the log-probs are what shows the training.
Runs the Triton paths compiled on CUDA, interpreted on CPU."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import random

import pytest
from test_data_common import random_groups, tiny_model

from r3fast.config import LossConfig
from r3fast.data import pack_sequences, plan_step
from r3fast.loss import SpanLoss
from r3fast.model import use_packed_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def trajectory(impl: str, steps: int = 4) -> list[tuple[float, float]]:
    """(loss, Σ span log-probs) before each of `steps` AdamW steps."""
    seqs = random_groups(random.Random(3), 2, 4, (20, 30), (6, 14))
    plan = plan_step(seqs)
    model = use_packed_attention(tiny_model("llama")).to(DEVICE).train()
    loss = SpanLoss(LossConfig(loss_type="grpo", beta=0.0, impl=impl), temperature=0.9, max_span_tokens=14)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = []
    for _ in range(steps):
        total, logp = 0.0, 0.0
        for row in pack_sequences(seqs, 128):  # several rows: the step-wide normaliser matters
            res, _ = loss(model, row.to(DEVICE), plan)
            res.loss.backward()
            total += float(res.loss)
            logp += float(res.logp.sum())
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append((total, logp))
    return out


@pytest.mark.parametrize("impl", ["triton", "triton_atomic"])
def test_same_trajectory_at_every_step(impl):
    want, got = trajectory("torch"), trajectory(impl)
    assert abs(want[-1][1] - want[0][1]) > 1.0, "the model must move for the test to mean anything"
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), f"step {step}: {impl} {a} vs torch {b}"
