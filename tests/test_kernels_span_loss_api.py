"""span_grpo_loss: reductions, micro-batch accumulation, input errors, memory bound, GPU paths."""

import functools
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
from r3fast.kernels import span_grpo_loss, span_logprobs
from r3fast.kernels.reference import naive_span_grpo_loss
from torch.utils._python_dispatch import TorchDispatchMode

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled Triton on CUDA, the interpreter on CPU
IMPLS = ["torch", "triton", "triton_atomic"]


def problem(n=40, h=16, v=97, dtype=torch.float32, device=DEVICE):
    mask = torch.rand(n, device=device) < 0.5
    mask[:2] = True
    return dict(
        hidden=torch.randn(n, h, device=device).to(dtype),
        weight=(torch.randn(v, h, device=device) * 2 / h**0.5).to(dtype),  # logits ~ N(0, 4)
        targets=torch.randint(0, v, (n,), device=device),
        mask=mask,
        advantages=torch.randn(n, device=device),
    )


def by_hand(adv, mask, seq, loss_type, num_items=None):
    """The four reductions written out with loops; with old = logp (r = 1), β = 0: L_t = −A_t."""
    per_seq = {}
    for a, m, s in zip(adv.tolist(), mask.tolist(), seq.tolist(), strict=True):
        if m:
            per_seq.setdefault(s, []).append(-a)
    tokens = [x for xs in per_seq.values() for x in xs]
    if loss_type == "grpo":
        return sum(sum(xs) / len(xs) for xs in per_seq.values()) / (num_items or len(per_seq))
    if loss_type == "bnpo":
        return sum(tokens) / max(1, len(tokens))
    if loss_type == "dr_grpo":
        return sum(tokens) / (num_items or len(per_seq) * max(len(xs) for xs in per_seq.values()))
    return sum(tokens) / (num_items or len(tokens))


@pytest.mark.parametrize("num_items", [None, 7.0])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_reductions_by_hand(loss_type, num_items, seed):
    p = problem()
    seq = torch.sort(torch.randint(0, 5, (40,), device=DEVICE)).values
    out = span_grpo_loss(**p, seq_ids=seq, loss_type=loss_type, num_items=num_items, impl="torch")
    want = by_hand(p["advantages"], p["mask"], seq, loss_type, num_items)
    assert out.loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6), seed


def test_dr_grpo_without_seq_ids_is_one_sequence(seed):
    p = problem()
    out = span_grpo_loss(**p, loss_type="dr_grpo", impl="torch")
    m = int(p["mask"].sum())
    assert out.loss.item() == pytest.approx(-p["advantages"][p["mask"]].sum().item() / m, rel=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_sum_to_full_step(loss_type, impl, seed):
    """With the global num_items, losses and grads of two micro-batches add up to the full batch's."""
    p = problem()
    seq = torch.sort(torch.randint(0, 4, (40,), device=DEVICE)).values
    p["seq_ids"] = seq
    first = seq < 2  # micro-batch boundary on a sequence boundary
    n_seq = len(set(seq[p["mask"]].tolist()))
    span = max(int((p["mask"] & (seq == s)).sum()) for s in seq.unique())
    num_items = {"grpo": n_seq, "dr_grpo": n_seq * span, "dapo": int(p["mask"].sum())}[loss_type]
    kw = dict(loss_type=loss_type, num_items=num_items, impl=impl)
    w = p["weight"].requires_grad_()
    full = span_grpo_loss(**p, **kw).loss
    (g_full,) = torch.autograd.grad(full, w)
    total, g_sum = 0.0, torch.zeros_like(w)
    for part in (first, ~first):
        sub = {k: (x if k == "weight" else x[part]) for k, x in p.items()}
        loss = span_grpo_loss(**sub, **kw).loss
        g_sum += torch.autograd.grad(loss, w)[0]
        total += loss.item()
    assert total == pytest.approx(full.item(), rel=1e-5, abs=1e-6), seed
    torch.testing.assert_close(g_sum, g_full, rtol=1e-4, atol=1e-6)


def _bad(p, **change):
    return {**p, **change}


BAD_INPUTS = [
    (lambda p: _bad(p, hidden=p["hidden"][0]), ValueError, "hidden must be a 2-D"),
    (lambda p: _bad(p, weight=p["weight"][:, :5]), ValueError, "weight"),
    (lambda p: _bad(p, weight=p["weight"].double()), TypeError, "weight"),
    (lambda p: _bad(p, hidden=p["hidden"].int()), TypeError, "hidden"),
    (lambda p: _bad(p, targets=p["targets"][:-1]), ValueError, "targets"),
    (lambda p: _bad(p, targets=p["targets"].float()), TypeError, "targets"),
    (lambda p: _bad(p, mask=p["mask"].long()), TypeError, "mask"),
    (lambda p: _bad(p, advantages=p["advantages"][:3]), ValueError, "advantages"),
    (lambda p: _bad(p, old_logp=torch.zeros(3, device=DEVICE)), ValueError, "old_logp"),
    (lambda p: _bad(p, seq_ids=torch.zeros(40, device=DEVICE)), TypeError, "seq_ids"),
    (lambda p: _bad(p, beta=0.1), ValueError, "ref_logp"),
    (lambda p: _bad(p, loss_type="grpo"), ValueError, "seq_ids"),
    (lambda p: _bad(p, loss_type="ppo"), ValueError, "loss_type"),
    (lambda p: _bad(p, impl="cuda"), ValueError, "impl"),
    (lambda p: _bad(p, impl="triton_splitv"), ValueError, "impl"),  # one name per impl: "triton"
    (lambda p: _bad(p, temperature=0.0), ValueError, "temperature"),
    (lambda p: _bad(p, num_items=0), ValueError, "num_items"),
    (lambda p: _bad(p, eps_low=-0.1), ValueError, "eps_low"),
    (lambda p: _bad(p, targets=torch.where(p["mask"], 97, p["targets"])), ValueError, "targets"),
]


@pytest.mark.parametrize("make,exc,match", BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        span_grpo_loss(**make(problem()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors only")
def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="impl='triton' needs CUDA"):
        span_grpo_loss(**problem(), impl="triton")


def test_targets_off_the_mask_are_not_checked():
    p = problem()
    p["targets"] = torch.where(p["mask"], p["targets"], -100)  # ignore_index off the span is fine
    span_grpo_loss(**p, impl="torch")
    span_logprobs(p["hidden"], p["weight"], p["targets"], p["mask"], impl="torch")


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_torch_path_never_builds_m_by_v(monkeypatch):
    """Forward + backward allocate at most [rows, block_v] tiles; the naive path (control) does not."""
    import r3fast.kernels.span_loss_torch as chunked

    monkeypatch.setattr(chunked, "TILE_ELEMS", 16 * 256)
    monkeypatch.setattr(chunked, "BLOCK_V", 256)
    n, h, v = 300, 8, 1000  # M·V = 3e5 ≫ V·H = 8e3 (dW) and N·H
    p = problem(n, h, v)
    p["mask"][:] = True
    chunked_loss = functools.partial(span_grpo_loss, impl="torch")  # "auto" is Triton on CUDA
    for fn, fused in ((chunked_loss, True), (naive_span_grpo_loss, False)):
        hidden, weight = p["hidden"].clone().requires_grad_(), p["weight"].clone().requires_grad_()
        with _LargestTensor() as probe:
            out = fn(**{**p, "hidden": hidden, "weight": weight})
            out.loss.backward()
        if fused:
            assert probe.largest <= v * h, f"largest tensor {probe.largest} elements (tile: {16 * 256})"
        else:
            assert probe.largest >= n * v  # the probe sees the [M, V] logits when they exist


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_lm_head_gets_no_grad(impl, seed):
    """A frozen weight (e.g. LoRA): only d hidden, equal to the one computed with d weight."""
    p = problem()
    h = p["hidden"].requires_grad_()
    (dh_frozen,) = torch.autograd.grad(span_grpo_loss(**p, impl=impl).loss, h)
    w = p["weight"].requires_grad_()
    dh, dw = torch.autograd.grad(span_grpo_loss(**p, impl=impl).loss, (h, w))
    assert dw.any()
    torch.testing.assert_close(dh_frozen, dh, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_strided_inputs_and_int32_ids(impl, seed):
    """hidden as a column slice of a wider buffer, W column-major, int32 ids: same as contiguous."""
    p = problem()
    p["seq_ids"] = torch.sort(torch.randint(0, 3, (40,), device=DEVICE)).values
    kw = dict(loss_type="grpo", impl=impl)
    h, w = p["hidden"].requires_grad_(), p["weight"].requires_grad_()
    want = span_grpo_loss(**p, **kw)
    want_grads = torch.autograd.grad(want.loss, (h, w))
    wide = torch.randn(40, 16 + 5, device=DEVICE)
    wide[:, 3:19] = p["hidden"].detach()
    h_s, w_s = wide[:, 3:19].requires_grad_(), w.detach().T.contiguous().T.requires_grad_()
    strided = {
        **p,
        "hidden": h_s,
        "weight": w_s,
        "targets": p["targets"].int(),
        "seq_ids": p["seq_ids"].int(),
    }
    got = span_grpo_loss(**strided, **kw)
    torch.testing.assert_close(got.logp, want.logp)
    torch.testing.assert_close(got.loss, want.loss)
    for g, g_want in zip(torch.autograd.grad(got.loss, (h_s, w_s)), want_grads, strict=True):
        torch.testing.assert_close(g, g_want)


def test_empty_mask_keeps_a_graph():
    p = problem()
    p["mask"][:] = False
    hidden = p["hidden"].requires_grad_()
    out = span_grpo_loss(**p, impl="torch")
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.logp.shape == (0,) and out.clip_frac.item() == 0.0
    assert hidden.grad is not None and not hidden.grad.any()


_COMPILE_SM90 = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
import r3fast.kernels.span_loss_triton as k
import r3fast.kernels.span_loss_splitv as sv
common = {"idx_ptr": "*i64", "y_ptr": "*i64", "M": "i32", "stride_hn": "i32", "stride_hh": "i32",
          "stride_wv": "i32", "stride_wh": "i32", "inv_temp": "fp32"}
grads = {"lse_ptr": "*fp32", "g_ptr": "*fp32", "scale_ptr": "*fp32"}
for dt, fp32_dot, precision in (("bf16", False, "ieee"), ("fp16", False, "ieee"), ("fp32", True, "tf32x3")):
    io = {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", **common}
    blocks = dict(V=151936, H=1536, BLOCK_M=64, BLOCK_V=128, BLOCK_K=64, FP32_DOT=fp32_dot,
                  PRECISION=precision)
    fwd = {"part_ptr": "*fp32", **io}
    bwd = {"dh_ptr": "*fp32", "dw_ptr": "*fp32", **grads, **io}
    dz = {"dz_ptr": "*fp32" if dt == "fp32" else f"*{dt}", "v0": "i32", "VC": "i32", "stride_dz": "i32",
          **grads, **io}
    for fn, sig, const in ((k._span_fwd_kernel, fwd, {**blocks, "S": 4}),
                           (k._span_bwd_kernel, bwd, {**blocks, "COMPUTE_DW": True, "SCALED": dt == "fp16"}),
                           (sv._span_dz_kernel, dz, {**blocks, "SCALED": dt == "fp16"})):
        sig = {name: sig.get(name, "constexpr") for name in fn.arg_names}
        asm = compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 32)).asm
        assert "cubin" in asm, (fn, dt)
"""


def test_kernels_compile_for_sm90(tmp_path):
    """The compiled (non-interpreted) kernels build for an H100 even on a CPU machine.

    In a subprocess without TRITON_INTERPRET (the interpreter's patches break real compilation) and
    with an empty cache (a cached cubin would hide a broken kernel).
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True, text=True)
    if res.returncode and "GPUTarget" in res.stderr and "ImportError" in res.stderr:
        pytest.skip("this triton build cannot target CUDA")
    assert res.returncode == 0, res.stderr[-3000:]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_cuda_triton_large_vocab_vs_fp64(loss_type, seed):
    """Qwen-sized vocabulary in bf16; fp64 oracle on a sub-sampled problem (M = 256 rows)."""
    p = problem(n=1024, h=896, v=151936, dtype=torch.bfloat16, device="cuda")
    p["mask"] = torch.zeros(1024, dtype=torch.bool, device="cuda")
    p["mask"][torch.randperm(1024, device="cuda")[:256]] = True
    p["seq_ids"] = torch.arange(1024, device="cuda") // 128
    logp = span_logprobs(p["hidden"], p["weight"], p["targets"], p["mask"], temperature=0.9, impl="torch")
    p["ref_logp"] = logp + 0.1 * torch.randn_like(logp)  # a reference close to the policy
    kw = dict(beta=0.04, temperature=0.9, loss_type=loss_type)
    outs = {}
    for name, fn, extra in (
        ("fp64", naive_span_grpo_loss, dict(compute_dtype=torch.float64)),
        ("bf16", naive_span_grpo_loss, {}),
        ("triton", span_grpo_loss, dict(impl="triton")),
        ("torch", span_grpo_loss, dict(impl="torch")),
    ):
        h, w = p["hidden"].clone().requires_grad_(), p["weight"].clone().requires_grad_()
        out = fn(**{**p, "hidden": h, "weight": w}, **kw, **extra)
        outs[name] = (out.loss, out.logp, out.entropy, *torch.autograd.grad(out.loss, (h, w)))
    for i, what in enumerate(["loss", "logp", "entropy", "d hidden", "d weight"]):
        exact = outs["fp64"][i].double()
        scale = exact.abs().max().clamp_min(1e-2)
        err = {k: ((v[i].double() - exact).abs().max() / scale).item() for k, v in outs.items()}
        for impl in ("triton", "torch"):
            assert err[impl] <= err["bf16"] + 2e-3, f"{impl} {what}: {err} ({seed=})"


@cuda
@pytest.mark.cuda
def test_cuda_triton_matches_torch_path_large(seed):
    """A larger batch (M ≈ 4096): the two fused paths agree to bf16 precision, relative to the max."""
    p = problem(n=8192, h=1536, v=151936, dtype=torch.bfloat16, device="cuda")
    outs = {}
    for impl in ("triton", "torch"):
        h, w = p["hidden"].clone().requires_grad_(), p["weight"].clone().requires_grad_()
        out = span_grpo_loss(**{**p, "hidden": h, "weight": w}, impl=impl)
        outs[impl] = (out.logp, out.entropy, *torch.autograd.grad(out.loss, (h, w)))
    for what, a, b in zip(["logp", "entropy", "d hidden", "d weight"], *outs.values(), strict=True):
        rel = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
        assert rel <= 1e-2, f"{what}: triton vs torch relative error {rel:.3g} ({seed=})"


@pytest.mark.parametrize("dtype,bits", [(torch.bfloat16, 16), (torch.float16, 16), (torch.float32, 32)])
def test_autotune_prunes_by_operand_width_and_shared_memory(monkeypatch, dtype, bits):
    """A launch tunes only the tiles listed for its operand width that fit the GPU's shared memory
    (and the smallest one when none fits): no config is compiled only to be dropped."""
    import r3fast.kernels.span_loss_triton as k
    import r3fast.kernels.triton_common as tc  # the prune looks smem_limit up here

    tuner = tc.autotuned(k._span_bwd_kernel, k.BWD_TILES, key=["V", "H"])
    args = {"h_ptr": torch.zeros(2, 2, dtype=dtype)}
    tile = lambda c: (
        c.kwargs["BLOCK_M"],
        c.kwargs["BLOCK_V"],
        c.kwargs["BLOCK_K"],
        c.num_warps,
        c.num_stages,
    )
    monkeypatch.setattr(tc, "smem_limit", lambda: 227 * 1024)
    assert [tile(c) for c in tuner.early_config_prune(tuner.configs, args)] == k.BWD_TILES[bits]
    elem = torch.finfo(dtype).bits // 8
    need = sorted(tc.smem_bytes(bm, bv, bk, s, elem) for bm, bv, bk, _, s in k.BWD_TILES[bits])
    monkeypatch.setattr(tc, "smem_limit", lambda: need[0])  # only the smallest tile fits
    kept = [tile(c) for c in tuner.early_config_prune(tuner.configs, args)]
    assert len(kept) == sum(n <= need[0] for n in need) and all(
        tc.smem_bytes(bm, bv, bk, s, elem) <= need[0] for bm, bv, bk, _, s in kept
    )
    monkeypatch.setattr(tc, "smem_limit", lambda: 1024)  # nothing fits: the smallest, not an empty list
    assert len(tuner.early_config_prune(tuner.configs, args)) == 1
