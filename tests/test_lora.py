"""LoRA through peft: the reference is the base with adapters off (no copy), steps move the policy the
way the advantages say and leave the base untouched, exports and resumes are exact."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from r3fast.config import LossConfig, ModelConfig
from r3fast.data import TrainSequence, pack_step
from r3fast.guard import NonFiniteGuard
from r3fast.learner import Learner
from r3fast.lora import apply_lora, merged_weights, save_merged
from r3fast.loss import SpanLoss
from r3fast.model import use_packed_attention
from tests.conftest import tiny_llama
from tests.test_trainer import make_trainer, tiny_config

peft = pytest.importorskip("peft", reason="peft is in the test extras")

SPEC = ModelConfig(lora={"r": 4, "alpha": 8}).lora  # all-linear, dropout 0


def sequences(seed: int = 0) -> list[TrainSequence]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(10, 1000, (14,), generator=g).tolist()
    return [
        TrainSequence.from_parts(prefix, torch.randint(10, 1000, (n,), generator=g).tolist(), a, group_id=0)
        for n, a in ((6, 1.0), (9, -1.0), (4, 1.0), (7, -1.0))
    ]


def lora_learner(tok, *, lr=2e-2, beta=0.04, head=False):
    base = use_packed_attention(tiny_llama(len(tok), seed=4))
    spec = {**SPEC, "target_modules": ["q_proj", "v_proj", "lm_head"]} if head else SPEC
    model = apply_lora(copy.deepcopy(base), spec)
    loss = SpanLoss(LossConfig(beta=beta, impl="torch"), temperature=0.9, max_span_tokens=16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    learner = Learner(model=model, ref_model=None, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=torch.device("cpu"), grad_clip=0.0, ref_adapters_off=beta > 0)  # fmt: skip
    return base, model, loss, learner


def test_reference_is_the_base_with_adapters_off(smol_tokenizer):
    base, model, loss, learner = lora_learner(smol_tokenizer)
    plan, rows = pack_step(sequences(), max_tokens=512, shared_prefix=False, seed=0, step=0)
    for _ in range(2):  # adapters trained away from their zero init
        learner.step(plan, rows)
    (row,) = rows
    assert not torch.equal(loss.logprobs(model, row), loss.logprobs(base, row)), "the adapters did not train"
    assert torch.equal(learner.ref_logprobs(row), loss.logprobs(base, row))
    assert not torch.equal(loss.logprobs(model, row), loss.logprobs(base, row)), "adapters stay off after"


@pytest.mark.parametrize("head", [False, True], ids=["all_linear", "with_lm_head"])
def test_steps_follow_the_advantage_and_leave_the_base(smol_tokenizer, head):
    base, model, loss, learner = lora_learner(smol_tokenizer, lr=5e-3, beta=0.0, head=head)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    seqs = sequences(1)
    plan, rows = pack_step(seqs, max_tokens=512, shared_prefix=False, seed=0, step=0)
    (row,) = rows

    def per_seq() -> torch.Tensor:
        lp, owner = loss.logprobs(model, row), row.seq_index[row.span_mask]
        return torch.stack([lp[owner == i].sum() for i in range(len(seqs))])

    before = per_seq()
    for _ in range(4):
        learner.step(plan, rows)
    delta = per_seq() - before
    assert (delta[[0, 2]] > 0).all() and (delta[[1, 3]] < 0).all(), delta
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} is frozen but changed"
    if head:  # the head's adapter is in the span loss's weight: it got a gradient and moved
        a = dict(model.named_parameters())["base_model.model.lm_head.lora_B.default.weight"]
        assert a.abs().sum() > 0


def test_merged_export_loads_without_peft_and_scores_the_same(smol_tokenizer, tmp_path):
    base, model, loss, learner = lora_learner(smol_tokenizer)
    plan, rows = pack_step(sequences(), max_tokens=512, shared_prefix=False, seed=0, step=0)
    learner.step(plan, rows)
    save_merged(model, tmp_path / "final", smol_tokenizer)
    from transformers import AutoModelForCausalLM

    plain = use_packed_attention(AutoModelForCausalLM.from_pretrained(tmp_path / "final"))
    assert not hasattr(plain, "peft_config")
    torch.testing.assert_close(
        loss.logprobs(plain, rows[0]), loss.logprobs(model, rows[0]), rtol=1e-5, atol=1e-5
    )
    names = dict(merged_weights(model))
    assert set(names) == {n for n, _ in base.named_parameters()}  # the plain model's names, tied once
    assert json.loads((tmp_path / "final" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_lora_run_resumes_exactly(tmp_path, smol_tokenizer):
    """The trainer with model.lora: checkpoints hold the adapter; a killed run resumed from one equals
    the straight run, adapter weights bit for bit; final/ is the merged model."""
    over = {"trainer.steps": 3, "eval.n": 0, "model.lora": "{r: 4, alpha: 8}", "loss.beta": 0.04}
    straight = make_trainer(tiny_config(tmp_path / "a", **over), smol_tokenizer)
    assert straight.ref_model is None and straight.learner.ref_adapters_off
    straight.train()

    class Killed(Exception):
        pass

    def kill(step, metrics):
        if step == 2:
            raise Killed

    cfg = tiny_config(tmp_path / "b", **over)
    with pytest.raises(Killed):
        make_trainer(cfg, smol_tokenizer, callbacks=[kill]).train()
    assert (tmp_path / "b" / "run" / "checkpoints" / "step_00000002" / "adapter_model.safetensors").is_file()
    resumed = make_trainer(cfg, smol_tokenizer, resume=True)
    assert resumed.step == 2
    resumed.train()
    a = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert (tmp_path / "a" / "run" / "final" / "model.safetensors").is_file()
