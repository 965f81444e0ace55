"""Packed and shared-prefix rows on the real SmolLM2-135M-Instruct weights (fp32): span log-probs equal
the per-sequence ones, through transformers' own packed path and through r3fast's attention."""

from __future__ import annotations

import random

import pytest
import torch
from test_data_common import single_thread, token_logp, unpacked_logp

from r3fast.data import TrainSequence, pack_groups, pack_sequences
from r3fast.model import forward_hidden, use_packed_attention
from r3fast.models import load_model

# Max abs diff of log-probs. fp32: the 1e-5 for packed rows; shared-prefix rows run other GEMM
# shapes through 30 layers and measured 1.2e-5 (3.5e-6 relative), so 2e-5 there. fp64 shows that the
# layouts compute the same function: what is left is rounding.
TOL = {torch.float32: {"packed": 1e-5, "shared": 2e-5}, torch.float64: {"packed": 1e-10, "shared": 1e-10}}


@pytest.fixture(scope="module")
def smol():
    with single_thread():
        model, tok = load_model("smollm2-135m-instruct", dtype=torch.float32)
        yield model.eval(), tok


def _r3_sequences(tok) -> list[TrainSequence]:
    """Two groups of three: chat-rendered prefix (a task and a failed answer), reflections of 5-40 tokens."""
    rng = random.Random(0)
    words = tok.encode(
        " the answer used 7 twice so it broke the rule and the total was wrong", add_special_tokens=False
    )
    seqs = []
    for gid, task in enumerate(["Use 3, 5, 9 to make 24.", "Use 2, 4, 6, 8 to make 10."]):
        msgs = [{"role": "user", "content": task}, {"role": "assistant", "content": "3 * 5 + 9 = 24"}]
        prefix = tok.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"]
        for _ in range(3):
            refl = [rng.choice(words) for _ in range(rng.randint(5, 40))]
            seqs.append(TrainSequence.from_parts(prefix, refl, rng.uniform(-1, 1), group_id=gid))
    return seqs


def _span_logp(model, rows, backend=None) -> dict[int, torch.Tensor]:
    got: dict[int, torch.Tensor] = {}
    for row in rows:
        h, _ = forward_hidden(model, row, backend=backend)
        lp = token_logp(model, h, row.targets)
        for i in row.seq_index[row.span_mask].unique().tolist():
            got[i] = lp[row.span_mask & (row.seq_index == i)]
    return got


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smollm2_packed_and_shared_prefix_logp_equal_unpacked(smol, dtype) -> None:
    model, tok = smol
    model.to(dtype)
    seqs = _r3_sequences(tok)
    with single_thread():
        ref = [unpacked_logp(model, s)[s.span_start - 1 : s.span_end - 1] for s in seqs]
        results = {"hf_sdpa_packed": _span_logp(model, pack_sequences(seqs, 1024))}
        use_packed_attention(model)
        try:
            results["r3fast_packed"] = _span_logp(model, pack_sequences(seqs, 1024), "sdpa")
            results["r3fast_shared_prefix"] = _span_logp(model, pack_groups(seqs, 1024), "sdpa")
        finally:
            model.set_attn_implementation("sdpa")
            model.float()
    for name, got in results.items():
        assert sorted(got) == list(range(len(seqs))), name
        tol = TOL[dtype]["shared" if "shared" in name else "packed"]
        for i, r in enumerate(ref):
            torch.testing.assert_close(
                got[i], r, atol=tol, rtol=0, msg=lambda m, n=name, i=i: f"{n} seq {i}: {m}"
            )
