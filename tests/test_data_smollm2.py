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

# How close is close enough, without tuning to one CPU. Every layout is compared with the unpacked
# per-sequence forward run in float64 (the true values of this model). In fp64 the layouts must agree
# to 1e-10: that shows they compute the same function. In fp32 each layout's error against fp64 may be
# at most FACTOR x the error of the unpacked fp32 forward itself (the same computation in the same
# dtype through 30 layers, whose rounding depends on which BLAS/oneDNN kernels this CPU picks),
# plus FLOOR for a draw where the unpacked run happens to round very well. Measured on Intel Xeon
# (AVX-512/AMX), native kernels: hf packed 2.25e-5, r3fast packed 2.01e-5, shared prefix 2.44e-5 against
# unpacked 2.01e-5, i.e. at most 1.21x; `.ci/cpu-matrix` (ATen default/avx2/avx512, oneDNN off, 1 thread)
# passes under FACTOR = 4, which leaves a margin over the measured ratio (issue 21).
FP64_TOL = 1e-10
FACTOR, FLOOR = 4.0, 64 * torch.finfo(torch.float32).eps


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


def _layouts(model, tok) -> tuple[list[torch.Tensor], dict[str, dict[int, torch.Tensor]]]:
    """Span log-probs of the unpacked forward and of each packed layout, in the model's dtype."""
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
    for name, got in results.items():
        assert sorted(got) == list(range(len(seqs))), name
    return ref, results


@pytest.fixture(scope="module")
def fp64_layouts(smol):
    model, tok = smol
    try:
        yield _layouts(model.double(), tok)
    finally:
        model.float()


@torch.no_grad()
def test_smollm2_layouts_equal_unpacked_in_fp64(fp64_layouts) -> None:
    ref, results = fp64_layouts
    for name, got in results.items():
        for i, r in enumerate(ref):
            torch.testing.assert_close(
                got[i], r, atol=FP64_TOL, rtol=0, msg=lambda m, n=name, i=i: f"{n} seq {i}: {m}"
            )


@torch.no_grad()
def test_smollm2_layouts_no_worse_than_unpacked_in_fp32(smol, fp64_layouts) -> None:
    model, tok = smol
    exact = torch.cat(fp64_layouts[0])
    ref, results = _layouts(model.float(), tok)
    unpacked_err = (torch.cat(ref).double() - exact).abs().max().item()
    bound = FACTOR * unpacked_err + FLOOR
    for name, got in results.items():
        err = (torch.cat([got[i] for i in range(len(ref))]).double() - exact).abs().max().item()
        print(f"{name}: {err:.3g} vs unpacked fp32 {unpacked_err:.3g}")
        assert err <= bound, (
            f"{name}: error {err:.3g} vs fp64 > {FACTOR} x unpacked fp32's {unpacked_err:.3g} + {FLOOR:.2g}"
        )
