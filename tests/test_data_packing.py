"""Packing: packed == unpacked log-probs and gradients, no cross-sequence attention, packer invariants."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data_common import VOCAB, random_groups, single_thread, tiny_model, token_logp, unpacked_logp

from r3fast.data import IGNORE_INDEX, TrainSequence, pack_sequences, plan_step
from r3fast.model import forward_hidden, use_packed_attention


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


TOL = 1e-5  # fp32


def _models():
    # (arch, attention implementation, r3fast backend or None for transformers' own path)
    return [
        ("llama", "sdpa", None),
        ("llama", "eager", None),
        ("qwen2", "sdpa", None),
        ("llama", "r3fast", "sdpa"),
        ("qwen2", "r3fast", "sdpa"),
        ("qwen3", "r3fast", "sdpa"),
    ]


def _build(arch: str, attn: str) -> torch.nn.Module:
    if attn == "r3fast":
        return use_packed_attention(tiny_model(arch, "sdpa"))
    return tiny_model(arch, attn)


@pytest.mark.parametrize("arch,attn,backend", _models())
def test_packed_logp_equals_unpacked(arch: str, attn: str, backend: str | None) -> None:
    model = _build(arch, attn)
    seqs = random_groups(random.Random(1), 3, 3, (7, 15), (2, 9), tail=1)
    rows = pack_sequences(seqs, max_tokens=64)
    assert len(rows) < len(seqs)  # several sequences per row, or the test proves nothing
    ref = [unpacked_logp(model, s) for s in seqs]
    with torch.no_grad():
        for row in rows:
            h, name = forward_hidden(model, row, backend=backend)
            assert h.shape == (row.num_tokens, model.config.hidden_size)
            got = token_logp(model, h, row.targets)
            for i in row.seq_index.unique().tolist():
                torch.testing.assert_close(got[row.seq_index == i], ref[i], atol=TOL, rtol=0)
    assert name == (f"hf_{attn}_position_ids" if backend is None else backend)


@pytest.mark.parametrize("arch,attn,backend", [m for m in _models() if m[1] != "eager"])
def test_packed_gradients_equal_unpacked(arch: str, attn: str, backend: str | None) -> None:
    model = _build(arch, attn)
    seqs = random_groups(random.Random(2), 2, 3, (6, 12), (3, 7))
    # reference: sum of advantage-weighted span log-probs, one sequence at a time
    model.zero_grad()
    for s in seqs:
        lp = unpacked_logp(model, s)[s.span_start - 1 : s.span_end - 1]
        (lp * s.advantage).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for row in pack_sequences(seqs, max_tokens=50):
        h, _ = forward_hidden(model, row, backend=backend)
        lp = token_logp(model, h, row.targets)
        (lp * row.advantages * row.span_mask).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=TOL, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("attn,backend", [("sdpa", None), ("r3fast", "sdpa")])
def test_no_attention_across_sequences(attn: str, backend: str | None) -> None:
    model = _build("llama", attn)
    seqs = random_groups(random.Random(3), 1, 4, (6, 6), (4, 8))
    (row,) = pack_sequences(seqs, max_tokens=200)
    victim = int(row.seq_index[row.num_tokens // 2])  # a sequence in the middle of the row
    perturbed = row.input_ids.clone()
    where = row.seq_index == victim
    perturbed[where] = (perturbed[where] + 17) % VOCAB
    with torch.no_grad():
        h0, _ = forward_hidden(model, row, backend=backend)
        row.input_ids = perturbed
        h1, _ = forward_hidden(model, row, backend=backend)
    assert (h0[where] - h1[where]).abs().max() > 1e-3  # the perturbation is visible where it should be
    torch.testing.assert_close(h0[~where], h1[~where], atol=1e-6, rtol=0)  # and nowhere else


def test_too_long_sequence_raises_naming_it() -> None:
    seqs = [TrainSequence(input_ids=[1] * 10, span_start=5, span_end=10, advantage=1.0)] * 2
    seqs.append(TrainSequence(input_ids=[1] * 33, span_start=5, span_end=33, advantage=1.0))
    with pytest.raises(ValueError, match=r"sequence 2 has 33 tokens > max_tokens=32"):
        pack_sequences(seqs, 32)


def test_invalid_sequences_rejected() -> None:
    with pytest.raises(ValueError, match="span_start"):
        TrainSequence(input_ids=[1, 2, 3], span_start=0, span_end=3, advantage=0.0)
    with pytest.raises(ValueError, match="sampler_logp"):
        TrainSequence(input_ids=[1, 2, 3], span_start=1, span_end=3, advantage=0.0, sampler_logp=[0.0])


def test_plan_step() -> None:
    seqs = random_groups(random.Random(4), 2, 3, (4, 8), (1, 9))
    plan = plan_step(seqs)
    assert plan.num_span_tokens == sum(s.span_len for s in seqs)
    assert plan.num_sequences == 6 and plan.max_span_len == max(s.span_len for s in seqs)
    rows = pack_sequences(seqs, 40)
    assert sum(r.num_span_tokens for r in rows) == plan.num_span_tokens


@st.composite
def _seqs(draw):
    n = draw(st.integers(1, 12))
    out = []
    for _ in range(n):
        length = draw(st.integers(1, 30))
        start = draw(st.integers(1, length))
        end = draw(st.integers(start, length))
        ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=length, max_size=length))
        adv = draw(st.floats(-3, 3, allow_nan=False))
        out.append(
            TrainSequence(
                input_ids=ids,
                span_start=start,
                span_end=end,
                advantage=adv,
                sampler_logp=[-float(k) for k in range(end - start)],
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(seqs=_seqs(), budget=st.integers(30, 90), seed=st.one_of(st.none(), st.integers(0, 5)))
def test_packer_invariants(seqs: list[TrainSequence], budget: int, seed: int | None) -> None:
    rows = pack_sequences(seqs, budget, seed=seed)
    assert rows == [] or len(rows) <= len(seqs)
    placed = torch.cat([r.seq_index for r in rows]).tolist()
    for i, s in enumerate(seqs):  # every token placed exactly once, sequences kept whole
        assert placed.count(i) == len(s)
    for r in rows:
        assert r.num_tokens <= budget
        cu = r.cu_seqlens.tolist()
        assert cu[0] == 0 and cu[-1] == r.num_tokens and r.cu_seqlens.dtype == torch.int32
        assert r.max_seqlen == max(b - a for a, b in itertools.pairwise(cu))
        olds = []
        for a, b in itertools.pairwise(cu):
            i = int(r.seq_index[a])
            s = seqs[i]
            assert (r.seq_index[a:b] == i).all()
            assert r.input_ids[a:b].tolist() == s.input_ids
            assert r.position_ids[a:b].tolist() == list(range(len(s)))
            assert r.targets[a:b].tolist() == s.input_ids[1:] + [IGNORE_INDEX]
            span = [s.span_start - 1 <= t < s.span_end - 1 for t in range(len(s))]
            assert r.span_mask[a:b].tolist() == span
            # the target of every span position is exactly the reflection
            assert r.targets[a:b][r.span_mask[a:b]].tolist() == s.input_ids[s.span_start : s.span_end]
            assert r.advantages[a:b].tolist() == [
                float(torch.tensor(s.advantage)) if m else 0.0 for m in span
            ]
            olds += s.sampler_logp
        assert r.sampler_logp.tolist() == olds and r.sampler_logp.numel() == r.num_span_tokens


def test_seeded_packing_is_deterministic() -> None:
    seqs = random_groups(random.Random(5), 4, 4, (5, 20), (1, 10))
    a = [r.seq_index.tolist() for r in pack_sequences(seqs, 64, seed=7)]
    b = [r.seq_index.tolist() for r in pack_sequences(seqs, 64, seed=7)]
    c = [r.seq_index.tolist() for r in pack_sequences(seqs, 64, seed=8)]
    assert a == b and a != c
