"""The span loss at real model shapes on a GPU, and one learner step on the default GPU path.

Written for the GPU machine (skipped without CUDA): Qwen2.5-1.5B's lm_head (H = 1536, V = 151936),
bf16 and fp16, M ∈ {1, 777, 4096} masked rows, peaked logits (|z| ~ 30), a forward split that lies
past V, and tiny dL/dlogp (fp16 underflow). Rule as in test_kernels_span_loss.py: a path's error vs
the fp64 oracle ≤ the naive reference's error in the same dtype + TOL[dtype].
"""

import pytest
import torch
from r3fast.kernels import span_grpo_loss
from r3fast.kernels.reference import naive_span_grpo_loss

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
H, V = 1536, 151936
TOL = {torch.bfloat16: 2e-3, torch.float16: 1e-3, torch.float32: 2e-5}
IMPLS = ["triton", "triton_atomic", "torch"]



def lm_head_problem(m: int, dtype: torch.dtype, *, logit_std: float = 2.0, adv_scale: float = 1.0) -> dict:
    """N = m + 64 rows, m of them masked; logits h·Wᵀ have standard deviation logit_std."""
    n = m + 64
    dev = "cuda"
    mask = torch.zeros(n, dtype=torch.bool, device=dev)
    mask[torch.randperm(n, device=dev)[:m]] = True
    return dict(
        hidden=torch.randn(n, H, device=dev).to(dtype),
        weight=(torch.randn(V, H, device=dev) * logit_std / H**0.5).to(dtype),
        targets=torch.randint(0, V, (n,), device=dev),
        mask=mask,
        advantages=torch.randn(n, device=dev) * adv_scale,
        seq_ids=torch.arange(n, device=dev) // 97,
    )


def fwd_bwd(fn, p: dict, **kw):
    h, w = p["hidden"].clone().requires_grad_(), p["weight"].clone().requires_grad_()
    out = fn(**{**p, "hidden": h, "weight": w}, **kw)
    dh, dw = torch.autograd.grad(out.loss, (h, w))
    return {"loss": out.loss, "logp": out.logp, "entropy": out.entropy, "d hidden": dh, "d weight": dw}


def check_against_oracle(
    p: dict, dtype: torch.dtype, impls: list[str], seed: int, tol: float | None = None, **kw
) -> None:
    exact = fwd_bwd(
        naive_span_grpo_loss,
        {**p, "hidden": p["hidden"].double(), "weight": p["weight"].double()},
        compute_dtype=torch.float64,
        **kw,
    )
    # the naive reference in the same dtype; fp16 logits [M, V] overflow, so fp16 compares with fp32
    naive = fwd_bwd(
        naive_span_grpo_loss, p, compute_dtype=torch.float32 if dtype == torch.float16 else None, **kw
    )
    for impl in impls:
        got = fwd_bwd(span_grpo_loss, p, impl=impl, **kw)
        for name, ex in exact.items():
            g = got[name]
            assert torch.isfinite(g).all(), f"{impl} {name}: non-finite ({seed=})"
            floor = 1.0 if name == "loss" else 1e-2
            scale = ex.abs().max().clamp_min(floor)
            err = ((g.double() - ex).abs().max() / scale).item()
            ref = ((naive[name].double() - ex).abs().max() / scale).item()
            assert err <= ref + (tol or TOL[dtype]), (
                f"{impl} {name}: {err:.3g} > naive {ref:.3g} + {TOL[dtype]} ({seed=})"
            )
        del got
        torch.cuda.empty_cache()


@pytest.mark.parametrize("m", [1, 777, 4096])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_real_lm_head_shapes(m, dtype, seed):
    p = lm_head_problem(m, dtype)
    logp = span_grpo_loss(**p, impl="torch").logp
    p["old_logp"] = (logp + 0.2 * torch.randn_like(logp)).float()  # ratios on both sides of the clip
    p["ref_logp"] = (logp + 0.2 * torch.randn_like(logp)).float()
    check_against_oracle(p, dtype, IMPLS, seed, beta=0.04, loss_type="grpo", temperature=0.9)


@pytest.mark.parametrize("precision,tol", [("highest", 2e-5), ("high", 1e-4), ("medium", 3e-3)])
def test_fp32_follows_torch_matmul_precision(precision, tol, seed):
    """fp32 models: IEEE fp32 by default; 3×tf32 ("high") and tf32 ("medium") are torch's own opt-in
    switch, and their error stays within the stated bound (vs the naive path under the same switch)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        p = lm_head_problem(777, torch.float32)
        check_against_oracle(p, torch.float32, ["triton", "triton_atomic"], seed, tol=tol, loss_type="dapo")
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_peaked_logits(dtype, seed):
    """|z| ~ 30: the online log-sum-exp must not overflow or lose the peak."""
    p = lm_head_problem(512, dtype, logit_std=12.0)
    check_against_oracle(p, dtype, IMPLS, seed, loss_type="dapo")


def test_fp16_tiny_upstream_gradient(seed):
    """dL/dlogp ≈ 1e-5 per token: dz = g·(onehot − p) is far below fp16's smallest normal; the
    scaled backward must keep d hidden as accurate as the fp32-computed naive reference."""
    p = lm_head_problem(1024, torch.float16, adv_scale=1e-2)
    check_against_oracle(p, torch.float16, ["triton", "triton_atomic"], seed, loss_type="dapo")


def test_non_contiguous_inputs(seed):
    """hidden as a column slice of a wider buffer and W transposed twice (column-major)."""
    p = lm_head_problem(777, torch.bfloat16)
    wide = torch.randn(p["hidden"].shape[0], H + 64, device="cuda", dtype=torch.bfloat16)
    wide[:, 32 : 32 + H] = p["hidden"]
    q = {**p, "hidden": wide[:, 32 : 32 + H], "weight": p["weight"].T.contiguous().T}
    assert not q["hidden"].is_contiguous() and not q["weight"].is_contiguous()
    for impl in ("triton", "triton_atomic"):
        a, b = fwd_bwd(span_grpo_loss, p, impl=impl), fwd_bwd(span_grpo_loss, q, impl=impl)
        torch.testing.assert_close(b["logp"], a["logp"], rtol=0, atol=0)
        torch.testing.assert_close(b["d hidden"], a["d hidden"], rtol=2e-2, atol=1e-5)


def test_splitv_is_deterministic(seed):
    p = lm_head_problem(2048, torch.bfloat16)
    a, b = fwd_bwd(span_grpo_loss, p, impl="triton"), fwd_bwd(span_grpo_loss, p, impl="triton")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_learner_step_default_gpu_path_vs_torch_sdpa(arch, dtype):
    """One learner step's loss and gradients: Triton loss + the default packed attention backend
    (torch varlen / flash-attn for plain rows, flex for shared-prefix rows) vs the chunked torch loss
    + per-sequence SDPA, on the same batch."""
    import random

    from test_data_common import random_groups, tiny_model

    from r3fast.config import LossConfig
    from r3fast.data import pack_groups, pack_sequences, plan_step
    from r3fast.loss import SpanLoss, lm_head_weight
    from r3fast.model import forward_hidden, use_packed_attention

    seqs = random_groups(random.Random(5), 3, 4, (100, 200), (20, 80))
    num_items = SpanLoss(LossConfig(loss_type="dapo"), temperature=0.9, max_span_tokens=80).num_items(
        plan_step(seqs)
    )
    results = {}
    for name, impl, backend, pack in (
        ("default", "triton", None, pack_sequences),
        ("default-tree", "triton", None, pack_groups),
        ("torch+sdpa", "torch", "sdpa", pack_sequences),
    ):
        model = use_packed_attention(tiny_model(arch)).cuda().to(dtype).train()
        total, used = 0.0, set()
        for row in pack(seqs, 1024):
            row = row.to("cuda")
            hidden, backend_used = forward_hidden(model, row, backend=backend)
            used.add(backend_used)
            out = span_grpo_loss(hidden, lm_head_weight(model), row.targets, row.span_mask, row.advantages,
                                 temperature=0.9, loss_type="dapo", seq_ids=row.seq_index,
                                 num_items=num_items, impl=impl)  # fmt: skip
            out.loss.backward()
            total += float(out.loss)
        print(name, sorted(used))
        results[name] = (total, [p.grad.float() for p in model.parameters()])
    base_loss, base_grads = results["torch+sdpa"]
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name in ("default", "default-tree"):
        loss, grads = results[name]
        assert loss == pytest.approx(base_loss, rel=tol, abs=tol), name
        for a, b in zip(grads, base_grads, strict=True):
            rel = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
            assert rel <= tol, f"{name}: gradient relative error {rel:.3g}"
