"""span_grpo_loss (torch and Triton paths) against the float64 naive oracle.

Rule (cut-cross-entropy's): error of a path vs the fp64 oracle ≤ error of the naive reference run in
the same dtype + TOL[dtype], errors measured relative to the oracle's largest magnitude. The tests run
on whatever device exists: compiled Triton on CUDA tensors when CUDA is present, the interpreter
(TRITON_INTERPRET=1) on CPU tensors otherwise. Inputs are fresh random draws; the seed is printed.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import time

import pytest
from r3fast.kernels import span_grpo_loss, span_logprobs
from r3fast.kernels.reference import naive_span_grpo_loss

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["torch", "triton", "triton_atomic"]  # "triton" = Triton forward + split-V backward
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 1e-3}
N, H, V = 37, 24, 203  # odd, V not a multiple of any block size
DENSITIES = {"none": 0.0, "one": None, "quarter": 0.25, "all": 1.0}


@pytest.fixture
def seed():
    s = time.time_ns() % 2**31
    torch.manual_seed(s)
    print(f"seed={s}")  # shown by pytest on failure
    return s


def make_mask(n: int, density: float | None) -> torch.Tensor:
    if density is None:  # exactly one masked token
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randint(0, n, ())] = True
        return mask
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n)[: round(density * n)]] = True
    return mask


def make_problem(n, h, v, dtype, density, with_old, with_ref, temperature=1.0):
    hidden = torch.randn(n, h).to(dtype)
    weight = (torch.randn(v, h) * 0.4).to(dtype)
    targets = torch.randint(0, v, (n,))
    targets[torch.rand(n) < 0.3] = -100  # ignore-index style ids off the mask must not matter
    mask = make_mask(n, density)
    targets[mask] = torch.randint(0, v, (int(mask.sum()),))
    seq_ids = torch.sort(torch.randint(0, 4, (n,))).values  # packed: 4 sequences in a row
    adv = torch.randn(n)
    exact = naive_span_grpo_loss(
        hidden.double(),
        weight.double(),
        targets,
        mask,
        adv,
        temperature=temperature,
        compute_dtype=torch.float64,
    )
    m = int(mask.sum())
    # old/ref near the current policy, so ratios land on both sides of the clip range
    old = (exact.logp + 0.3 * torch.randn(m)).float() if with_old else None
    ref = (exact.logp + 0.3 * torch.randn(m)).float() if with_ref else None
    if old is not None and m < n and torch.rand(()) < 0.5:  # also the [N] form
        old = torch.zeros(n).index_put((mask,), old)
    problem = dict(
        hidden=hidden,
        weight=weight,
        targets=targets,
        mask=mask,
        advantages=adv,
        old_logp=old,
        ref_logp=ref,
        seq_ids=seq_ids,
    )
    # drawn on the CPU (one RNG stream whatever the device), then moved to the device under test
    return {k: None if x is None else x.to(DEVICE) for k, x in problem.items()}


def run(fn, p, *, dtype=None, **kw):
    """Loss outputs and (d hidden, d weight) of fn on problem p, inputs cast to dtype."""
    hidden = p["hidden"].to(dtype or p["hidden"].dtype).detach().requires_grad_()
    weight = p["weight"].to(dtype or p["weight"].dtype).detach().requires_grad_()
    args = {k: v for k, v in p.items() if k not in ("hidden", "weight")}
    out = fn(hidden=hidden, weight=weight, **args, **kw)
    dh, dw = torch.autograd.grad(out.loss, (hidden, weight))
    return out, dh, dw


def assert_no_worse(name, got, naive, exact, dtype, seed):
    exact = exact.double()
    # The loss is a mean of O(|A|) = O(1) per-token terms of both signs: it can cancel to ~0 while
    # its rounding error stays that of the O(1) terms, so it is measured against 1, not itself.
    floor = 1.0 if name == "loss" else 1e-2
    scale = exact.abs().max().clamp_min(floor) if exact.numel() else 1.0
    err = ((got.double() - exact).abs().max() / scale).item() if exact.numel() else 0.0
    ref_err = ((naive.double() - exact).abs().max() / scale).item() if exact.numel() else 0.0
    assert got.shape == exact.shape, f"{name}: shape {list(got.shape)} != {list(exact.shape)}"
    assert err <= ref_err + TOL[dtype], (
        f"{name}: rel err {err:.3g} > naive {ref_err:.3g} + {TOL[dtype]} ({seed=})"
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("density", list(DENSITIES), ids=list(DENSITIES))
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_fp64_oracle(loss_type, beta, temperature, density, dtype, impl, seed):
    # old_logp given iff beta > 0: covers the default (old = logp.detach(), r = 1) and the clipped
    # path with asymmetric ε; with β > 0 also importance weights (half the cases) and TRL's
    # ratio-weighted KL gradient (at temperature 0.7)
    p = make_problem(N, H, V, dtype, DENSITIES[density], beta > 0, beta > 0, temperature)
    if beta > 0 and density in ("quarter", "all"):
        p["is_weights"] = (0.5 + torch.rand(int(p["mask"].sum()))).to(DEVICE)
    kw = dict(beta=beta, temperature=temperature, loss_type=loss_type, eps_low=0.2, eps_high=0.28)
    kw["bias_correction_kl"] = beta > 0 and temperature == 0.7
    exact, ex_dh, ex_dw = run(naive_span_grpo_loss, p, dtype=torch.float64, compute_dtype=torch.float64, **kw)
    naive, nv_dh, nv_dw = run(naive_span_grpo_loss, p, **kw)
    out, dh, dw = run(span_grpo_loss, p, impl=impl, **kw)

    assert dh.dtype == dtype and dw.dtype == dtype
    assert out.loss.shape == () and out.loss.dtype == torch.float32
    for name, got, nv, ex in [
        ("loss", out.loss, naive.loss, exact.loss),
        ("logp", out.logp, naive.logp, exact.logp),
        ("entropy", out.entropy, naive.entropy, exact.entropy),
        ("kl", out.kl, naive.kl, exact.kl),
        ("d hidden", dh, nv_dh, ex_dh),
        ("d weight", dw, nv_dw, ex_dw),
    ]:
        assert torch.isfinite(got).all(), f"{name} has non-finite values (unwritten output?) ({seed=})"
        assert_no_worse(name, got, nv, ex, dtype, seed)
    if p["old_logp"] is not None:  # without it the ratio is 1 and nothing can clip
        # clip decisions can flip only where the ratio sits within rounding of a clip boundary
        assert abs(out.clip_frac.item() - exact.clip_frac.item()) <= 1.0 / max(1, out.logp.numel()) + 1e-6
    if p["mask"].sum() == 0:
        assert out.loss.item() == 0.0 and not dh.any() and not dw.any()
    assert not dh[~p["mask"]].any(), "rows outside the mask must get no gradient"


@pytest.mark.parametrize("impl", IMPLS)
def test_kl_reported_without_beta(impl, seed):
    p = make_problem(N, H, V, torch.float32, 0.5, with_old=False, with_ref=True)
    with_ref = span_grpo_loss(**p, impl=impl)
    without = span_grpo_loss(**{**p, "ref_logp": None}, impl=impl)
    exact = naive_span_grpo_loss(**p, beta=0.0, compute_dtype=torch.float64)
    assert with_ref.kl.any() and torch.allclose(with_ref.kl.double(), exact.kl, rtol=1e-4, atol=1e-5)
    assert torch.equal(with_ref.loss, without.loss), "beta = 0: the KL must not enter the loss"


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16(impl, seed):
    p = make_problem(N, H, V, torch.float16, 0.5, True, True, temperature=0.7)
    kw = dict(beta=0.04, loss_type="dapo", temperature=0.7)
    exact, ex_dh, ex_dw = run(naive_span_grpo_loss, p, dtype=torch.float64, compute_dtype=torch.float64, **kw)
    naive, nv_dh, nv_dw = run(naive_span_grpo_loss, p, dtype=torch.float32, **kw)  # fp16 CPU matmul is spotty
    out, dh, dw = run(span_grpo_loss, p, impl=impl, **kw)
    assert dh.dtype == torch.float16
    assert_no_worse("loss", out.loss, naive.loss, exact.loss, torch.float16, seed)
    assert_no_worse("d hidden", dh, nv_dh, ex_dh, torch.float16, seed)
    assert_no_worse("d weight", dw, nv_dw, ex_dw, torch.float16, seed)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_span_logprobs(impl, temperature, seed):
    p = make_problem(N, H, V, torch.float32, 0.5, with_old=False, with_ref=False)
    hidden = p["hidden"].requires_grad_()
    logp = span_logprobs(hidden, p["weight"], p["targets"], p["mask"], temperature=temperature, impl=impl)
    exact = naive_span_grpo_loss(**p, temperature=temperature, compute_dtype=torch.float64).logp
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp.double(), exact, rtol=1e-5, atol=1e-5)


def test_impls_agree_on_multi_block_shapes(monkeypatch, seed):
    """Tiles smaller than the problem: many row chunks and V blocks in the torch path, many dz
    chunks (the last one partial) in the split-V backward."""
    import r3fast.kernels.span_loss_splitv as splitv
    import r3fast.kernels.span_loss_torch as chunked

    monkeypatch.setattr(chunked, "TILE_ELEMS", 7 * 50)
    monkeypatch.setattr(chunked, "BLOCK_V", 50)
    monkeypatch.setattr(splitv, "_MIN_CHUNK", 16)
    monkeypatch.setattr(splitv, "DZ_BYTES", 61 * 4 * 100)  # ≤ 100 columns per chunk: 4 chunks of V=333
    p = make_problem(61, 40, 333, torch.float32, 0.6, True, True, temperature=0.9)
    assert splitv.chunk_columns(int(p["mask"].sum()), 333, 4) < 333
    kw = dict(beta=0.04, loss_type="grpo", temperature=0.9)
    exact, ex_dh, ex_dw = run(naive_span_grpo_loss, p, dtype=torch.float64, compute_dtype=torch.float64, **kw)
    for impl in IMPLS:
        out, dh, dw = run(span_grpo_loss, p, impl=impl, **kw)
        for name, got, ex in [
            ("loss", out.loss, exact.loss),
            ("d hidden", dh, ex_dh),
            ("d weight", dw, ex_dw),
            ("entropy", out.entropy, exact.entropy),
        ]:
            torch.testing.assert_close(got.double(), ex, rtol=1e-4, atol=1e-5, msg=f"{impl} {name} ({seed=})")


@pytest.mark.parametrize("impl", ["triton", "triton_atomic"])
def test_forward_splits_past_the_vocabulary(monkeypatch, impl, seed):
    """V = 129 in 8 forward splits: whatever BLOCK_V runs, some splits hold only columns ≥ V
    (all padding) and must leave the log-sum-exp unchanged."""
    import r3fast.kernels.span_loss_triton as k

    monkeypatch.setattr(k, "num_splits", lambda m, v, device: 8)
    p = make_problem(N, H, 129, torch.float32, 0.5, True, True, temperature=0.8)
    kw = dict(beta=0.04, loss_type="dapo", temperature=0.8)
    exact, ex_dh, ex_dw = run(naive_span_grpo_loss, p, dtype=torch.float64, compute_dtype=torch.float64, **kw)
    out, dh, dw = run(span_grpo_loss, p, impl=impl, **kw)
    for name, got, ex in [("logp", out.logp, exact.logp), ("entropy", out.entropy, exact.entropy),
                          ("d hidden", dh, ex_dh), ("d weight", dw, ex_dw)]:  # fmt: skip
        torch.testing.assert_close(got.double(), ex, rtol=1e-4, atol=1e-5, msg=f"{name} ({seed=})")
