"""Shared group prefix: tree-masked rows give the same span log-probs and gradients as unshared packing."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data_common import VOCAB, random_groups, single_thread, tiny_model, token_logp, unpacked_logp

from r3fast.data import TrainSequence, pack_groups, pack_sequences
from r3fast.model import forward_hidden, use_packed_attention


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


TOL = 1e-5

CASES = [
    ("llama", "sdpa", None),
    ("llama", "eager", None),
    ("qwen2", "sdpa", None),
    ("qwen2", "r3fast", "sdpa"),
    ("qwen3", "r3fast", "sdpa"),
]


def _build(arch: str, attn: str) -> torch.nn.Module:
    return use_packed_attention(tiny_model(arch, "sdpa")) if attn == "r3fast" else tiny_model(arch, attn)


def _span_logp(model, row, backend) -> dict[int, torch.Tensor]:
    h, _ = forward_hidden(model, row, backend=backend)
    lp = token_logp(model, h, row.targets)
    return {
        i: lp[row.span_mask & (row.seq_index == i)] for i in row.seq_index[row.span_mask].unique().tolist()
    }


@pytest.mark.parametrize("arch,attn,backend", CASES)
def test_shared_prefix_logp_equals_unshared(arch: str, attn: str, backend: str | None) -> None:
    model = _build(arch, attn)
    seqs = random_groups(random.Random(10), 3, 4, (10, 20), (1, 8))
    rows = pack_groups(seqs, max_tokens=60)
    assert any(r.num_sequences < len(r.seq_index[r.span_mask].unique()) for r in rows)  # sharing happened
    got: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for row in rows:
            got.update(_span_logp(model, row, backend))
        assert sorted(got) == list(range(len(seqs)))
        for i, s in enumerate(seqs):
            ref = unpacked_logp(model, s)[s.span_start - 1 : s.span_end - 1]
            torch.testing.assert_close(got[i], ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch,attn,backend", [CASES[0], CASES[3]])
def test_shared_prefix_gradients_equal_unshared(arch: str, attn: str, backend: str | None) -> None:
    model = _build(arch, attn)
    seqs = random_groups(random.Random(11), 2, 3, (8, 14), (2, 6))
    grads = []
    for pack in (pack_sequences, pack_groups):
        model.zero_grad()
        for row in pack(seqs, max_tokens=48):
            h, _ = forward_hidden(model, row, backend=backend)
            (token_logp(model, h, row.targets) * row.advantages * row.span_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(
            grads[1][n], grads[0][n], atol=TOL, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}"
        )


def test_branches_do_not_see_each_other() -> None:
    model = tiny_model("llama")
    seqs = random_groups(random.Random(12), 1, 3, (8, 8), (5, 5))
    (row,) = pack_groups(seqs, 200)
    victim = row.branch_ids == 2
    with torch.no_grad():
        h0, name = forward_hidden(model, row)
        row.input_ids = torch.where(victim, (row.input_ids + 5) % VOCAB, row.input_ids)
        h1, _ = forward_hidden(model, row)
    assert name == "sdpa_tree_mask"
    assert (h0[victim] - h1[victim]).abs().max() > 1e-3
    torch.testing.assert_close(h0[~victim], h1[~victim], atol=1e-6, rtol=0)


def test_layout_and_tokens_saved() -> None:
    g, p = 8, 200
    seqs = random_groups(random.Random(13), 2, g, (p, p), (20, 120))
    (row,) = pack_groups(seqs, 100_000)
    assert row.num_tokens == 2 * (p - 1) + sum(s.span_len + 1 for s in seqs)
    assert row.num_tokens < 0.5 * sum(len(s) for s in seqs)  # R3-like shapes: most tokens are prefix
    for i, s in enumerate(seqs):
        at = row.seq_index == i
        assert row.position_ids[at].tolist() == list(range(p - 1, s.span_end))
        span = row.span_mask & at
        assert row.targets[span].tolist() == s.input_ids[s.span_start : s.span_end]
        assert (row.advantages[span] == torch.tensor(s.advantage)).all()
        assert (row.advantages[~row.span_mask] == 0).all()
    # sampler_logp follows span positions in row order
    order = row.seq_index[row.span_mask]
    want = torch.cat([torch.tensor(seqs[i].sampler_logp) for i in order.unique_consecutive().tolist()])
    torch.testing.assert_close(row.sampler_logp, want)


def test_groups_split_to_fit_budget_and_prefixes_checked() -> None:
    pre = list(range(10))
    mk = lambda ids, gid: TrainSequence(
        input_ids=ids, span_start=10, span_end=len(ids), advantage=1.0, group_id=gid
    )
    seqs = [mk(pre + [1] * 6, 0) for _ in range(4)]
    seqs.append(mk([7] + pre[1:] + [1] * 6, 0))  # same group id, different prefix: not shared
    rows = pack_groups(seqs, max_tokens=9 + 2 * 7)  # trunk + two branches per block
    assert all(r.num_tokens <= 23 for r in rows)
    assert sum(r.num_sequences for r in rows) == 3  # blocks: 2 + 2 of the group, 1 for the odd prefix
    assert sorted(torch.cat([r.seq_index[r.span_mask] for r in rows]).unique().tolist()) == list(range(5))
    with pytest.raises(ValueError, match="sequence 0 needs 16 tokens"):
        pack_groups(seqs, max_tokens=15)


@st.composite
def _groups(draw):
    seqs = []
    for gid in range(draw(st.integers(1, 4))):
        pre = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12))
        for _ in range(draw(st.integers(1, 5))):
            refl = draw(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=8))
            adv = draw(st.floats(-2, 2, allow_nan=False, width=32))
            old = [-float(k) for k in range(len(refl))]
            ids = pre + refl
            seqs.append(
                TrainSequence(
                    input_ids=ids,
                    span_start=len(pre),
                    span_end=len(ids),
                    advantage=adv,
                    group_id=gid,
                    sampler_logp=old,
                )
            )
    return seqs


@settings(max_examples=100, deadline=None)
@given(seqs=_groups(), budget=st.integers(22, 60), seed=st.one_of(st.none(), st.integers(0, 3)))
def test_pack_groups_invariants(seqs: list[TrainSequence], budget: int, seed: int | None) -> None:
    rows = pack_groups(seqs, budget, seed=seed)
    seen: dict[int, list[int]] = {}
    for r in rows:
        assert r.num_tokens <= budget and r.cu_seqlens[-1] == r.num_tokens
        assert r.branch_ids is not None and (r.seq_index[r.branch_ids == 0] == -1).all()
        olds = r.sampler_logp.tolist()
        k = 0
        for t in torch.nonzero(r.span_mask)[:, 0].tolist():
            i = int(r.seq_index[t])
            seen.setdefault(i, []).append(int(r.targets[t]))
            assert float(r.advantages[t]) == seqs[i].advantage and r.branch_ids[t] > 0
            assert olds[k] == seqs[i].sampler_logp[len(seen[i]) - 1]
            k += 1
    for i, s in enumerate(seqs):  # every reflection token is a target exactly once, in order
        assert seen.get(i, []) == s.input_ids[s.span_start : s.span_end]


def test_sdpa_segments_follow_the_tree_and_match_the_dense_mask(monkeypatch) -> None:
    """The CPU backend splits a block into trunk + one segment per branch (keys: trunk, then itself);
    a block laid out any other way keeps one dense mask. Both give the same hidden states."""
    from r3fast.model import forward
    from r3fast.model.forward import _tree_segments, sdpa_blocks

    model = use_packed_attention(tiny_model("llama", "sdpa"))
    seqs = random_groups(random.Random(14), 2, 3, (6, 9), (1, 5))
    (row,) = pack_groups(seqs, 200)
    segs = sdpa_blocks(row)
    cu = row.cu_seqlens.tolist()
    assert len(segs) == 2 * (1 + 3)  # per block: the trunk, then 3 branches
    for a, b, prefix, mask in segs:
        ids = set(row.branch_ids[a:b].tolist())
        assert len(ids) == 1
        if ids == {0}:
            assert prefix is None and mask is None
        else:
            pa, pb = prefix
            assert pa in cu and (row.branch_ids[pa:pb] == 0).all() and pb <= a
            assert mask.shape == (1, 1, b - a, pb - pa + b - a)
    assert _tree_segments(0, 5, [0, 1, 2, 1, 2], row.cu_seqlens.device) is None  # branch split in two
    assert _tree_segments(0, 4, [0, 1, 0, 1], row.cu_seqlens.device) is None  # trunk after a branch
    with torch.no_grad():
        h_seg, _ = forward_hidden(model, row, backend="sdpa")
        monkeypatch.setattr(forward, "_tree_segments", lambda *a: None)
        assert all(p is None and m is not None for _, _, p, m in sdpa_blocks(row))
        h_dense, _ = forward_hidden(model, row, backend="sdpa")
    torch.testing.assert_close(h_seg, h_dense, atol=1e-6, rtol=0)
