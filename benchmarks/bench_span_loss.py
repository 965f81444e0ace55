"""How fast and how lean is the fused span GRPO loss? fwd+bwd time and peak memory vs the baselines.

Rows: naive torch (materialised [M, V] logits), Liger's chunked fused-linear GRPO loss (works on all N
rows of its (B, T) batch, masking afterwards), Liger's Triton GRPO op fed materialised logits (GPU),
cut-cross-entropy's `linear_cross_entropy` on the M masked rows (a log-prob baseline: the same h·Wᵀ
work without the GRPO terms; GPU), r3fast torch (chunked), r3fast triton (split-V backward, the
default) and r3fast triton_atomic (GPU). Columns: median / p20 / p80 of fwd+bwd, peak memory above the
inputs, and the matmul floor: 8·M·H·V FLOPs (forward, recompute, dh, dW) at the measured matmul rate
of this device and dtype, the least a design that never stores [M, V] logits can do.

Peak memory: CUDA: max_memory_allocated above the baseline. CPU: the torch profiler's allocator events
(profile_memory=True, read as torch's own memory profiler reads them) replayed in order: the high-water
mark of live tensor bytes during one fwd+bwd above what was live before it (the inputs). Tensors only,
like the CUDA figure; the gradients of h and W are included in both.

    python benchmarks/bench_span_loss.py            # CPU: torch rows, small grid (~minutes on 2 cores)
    python benchmarks/bench_span_loss.py --target   # GPU: the target shape only (the GPU suite, .ci/gpu)
    python benchmarks/bench_span_loss.py --full     # GPU: the whole grid
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from r3fast.kernels import span_grpo_loss
from r3fast.kernels.reference import naive_span_grpo_loss

SEQ_LEN = 1024  # packed row length for the (B, T) layouts that Liger expects
GPU_GRID = dict(N=[4096, 16384], frac=[0.1, 0.25, 1.0], V=[49152, 151936], H=[576, 1536, 3584])
CPU_GRID = [(1024, 0.25, 8192, 256), (4096, 0.25, 49152, 576)]  # (N, frac, V, H); the 2nd is the target
GPU_TARGET = [(16384, 0.25, 151936, 1536)]  # Qwen2.5-1.5B's lm_head, 16k packed tokens, 25 % reflection
SMOKE = [(256, 0.25, 1024, 64)]  # a plumbing check on any device (the GPU suite's --dry-run)


def make_inputs(n: int, frac: float, v: int, h: int, dtype: torch.dtype, device: str) -> dict:
    b = max(1, n // SEQ_LEN)
    mask = torch.rand(b, n // b, device=device).argsort(1) < round(frac * n / b)  # same count per row
    return dict(
        hidden=(torch.randn(n, h, device=device, dtype=dtype) / h**0.25).requires_grad_(),
        weight=(torch.randn(v, h, device=device, dtype=dtype) / h**0.25).requires_grad_(),
        targets=torch.randint(0, v, (n,), device=device),
        mask=mask.reshape(-1),
        seq_adv=torch.randn(b, device=device),
        b=b,
    )


def row_naive(x: dict) -> Callable[[], torch.Tensor]:
    adv = x["seq_adv"].repeat_interleave(x["mask"].numel() // x["b"])
    args = (x["hidden"], x["weight"], x["targets"], x["mask"], adv)
    return lambda: naive_span_grpo_loss(*args).loss


def row_r3fast(impl: str) -> Callable[[dict], Callable[[], torch.Tensor]]:
    def make(x: dict) -> Callable[[], torch.Tensor]:
        adv = x["seq_adv"].repeat_interleave(x["mask"].numel() // x["b"])
        args = (x["hidden"], x["weight"], x["targets"], x["mask"], adv)
        return lambda: span_grpo_loss(*args, impl=impl).loss

    return make


def row_liger_chunked(x: dict) -> Callable[[], torch.Tensor]:
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    b, h = x["b"], x["hidden"]
    loss_fn = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=h.is_cuda)
    ids, mask = x["targets"].view(b, -1), x["mask"].view(b, -1).long()
    return lambda: loss_fn(h.view(b, -1, h.shape[1]), x["weight"], ids, mask, x["seq_adv"])[0]


def row_cce(x: dict) -> Callable[[], torch.Tensor]:
    from cut_cross_entropy import linear_cross_entropy

    idx = x["mask"].nonzero().squeeze(1)
    y = x["targets"][idx]
    impl = "cce" if x["hidden"].is_cuda else "torch_compile"
    return lambda: linear_cross_entropy(x["hidden"][idx], x["weight"], y, impl=impl)


def row_liger_triton(x: dict) -> Callable[[], torch.Tensor]:
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    b, h = x["b"], x["hidden"]
    # Liger asserts contiguous ids and mask (a [:, :-1] slice is a view with the old row stride)
    ids, mask = x["targets"].view(b, -1)[:, :-1].contiguous(), x["mask"].view(b, -1)[:, :-1].contiguous()

    def run() -> torch.Tensor:
        logits = (h @ x["weight"].T).view(b, -1, x["weight"].shape[0])  # [B, T, V] materialised
        return triton_grpo_loss(
            logits, None, None, ids, x["seq_adv"], mask, temperature=1.0, beta=0.0, reduce=True
        )[0]

    return run


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fwd_bwd(fn: Callable[[], torch.Tensor], x: dict, reps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + reps):
        x["hidden"].grad = x["weight"].grad = None
        _sync(x["hidden"].device.type)
        t0 = time.perf_counter()
        fn().backward()
        _sync(x["hidden"].device.type)  # host-device sync: time the GPU work, not the launches
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def peak_bytes(fn: Callable[[], torch.Tensor], x: dict) -> int:
    """Tensor bytes allocated at the high-water mark of one fwd+bwd, above those live before it."""
    x["hidden"].grad = x["weight"].grad = None
    if x["hidden"].is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn().backward()
    # The allocator's alloc (+) / free (−) instants, as torch's own memory profiler reads them; the op
    # events' memory columns are net per op interval and would hide transient tiles.
    from torch._C._profiler import _EventType

    allocs, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.typed[0] == _EventType.Allocation:
            allocs.append((e.start_time_ns, e.typed[1].alloc_size))
    live = peak = 0
    for _, size in sorted(allocs):
        live += size
        peak = max(peak, live)
    return peak


def matmul_tflops(dtype: torch.dtype, device: str) -> float:
    """Measured dense matmul rate (TFLOP/s) on a shape like the loss's (rows × H × V)."""
    m, k, n = (4096, 1536, 32768) if device == "cuda" else (512, 576, 8192)
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    ts = []
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(ts[1:]) / 1e12


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return f"{cpu.group(1) if cpu else platform.processor()} ({torch.get_num_threads()} threads)"


def fmt_row(rec: dict) -> str:
    head = f"{rec['N']:>6} {rec['frac']:>5} {rec['V']:>7} {rec['H']:>5} {rec['row']:<22}"
    if "error" in rec:
        return f"{head} {rec['error'][:60]}"
    cols = [rec[k] for k in ("median_ms", "p20_ms", "p80_ms", "peak_mib", "floor_ms")]
    return head + "".join(f" {c:>9.1f}" for c in cols) + f" {rec['x_floor']:>8.2f}×"


def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the whole GPU grid (default on CUDA)")
    ap.add_argument("--target", action="store_true", help="only the target shape (GPU: V=151936, H=1536)")
    ap.add_argument(
        "--smoke", action="store_true", help="one tiny shape: checks the plumbing, measures nothing"
    )
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32  # CPU: the trainer's fp32 path
    if args.smoke:
        grid = SMOKE
    elif args.target:
        grid = GPU_TARGET if gpu else CPU_GRID[-1:]
    else:
        grid = list(itertools.product(*GPU_GRID.values())) if gpu or args.full else CPU_GRID
    rows = {"naive torch": row_naive, "liger chunked": row_liger_chunked, "r3fast torch": row_r3fast("torch")}
    if gpu:
        rows |= {
            "liger triton (logits)": row_liger_triton,
            "cce (log-probs only)": row_cce,
            "r3fast triton": row_r3fast("triton"),
            "r3fast triton_atomic": row_r3fast("triton_atomic"),
        }
    load_before = os.getloadavg()  # a shared CPU box skews timings: record how busy it was
    rate = matmul_tflops(dtype, device)
    results = []
    print(f"{device_name(device)}  {dtype}  matmul {rate:.2f} TFLOP/s")
    cols = ("N", "frac", "V", "H", "row", "median ms", "p20 ms", "p80 ms", "peak MiB", "floor ms", "/floor")
    print("{:>6} {:>5} {:>7} {:>5} {:<22}".format(*cols[:5]) + "".join(f" {c:>9}" for c in cols[5:]))
    for n, frac, v, h in grid:
        x = make_inputs(n, frac, v, h, dtype, device)
        m = int(x["mask"].sum())  # host-device sync
        floor_ms = 8 * m * h * v / (rate * 1e12) * 1e3
        big = n * v * h > 1e11  # fewer reps where one iteration takes seconds
        reps = args.reps or (3 if big and not gpu else 10 if gpu else 5)
        for name, make in rows.items():
            rec = dict(N=n, frac=frac, V=v, H=h, M=m, row=name, floor_ms=floor_ms)
            try:
                fn = make(x)
                rec["peak_mib"] = peak_bytes(fn, x) / 2**20  # doubles as the first warm-up run
                ts = sorted(t * 1e3 for t in time_fwd_bwd(fn, x, reps, warmup=3 if gpu else 0))
                q = statistics.quantiles(ts, n=5, method="inclusive")
                rec |= dict(median_ms=statistics.median(ts), p20_ms=q[0], p80_ms=q[3], times_ms=ts)
                rec["x_floor"] = rec["median_ms"] / floor_ms
            except Exception as e:  # OOM (naive), no CUDA, or a peer's triton.CompilationError
                # (cut-cross-entropy 25.1.1 predates triton 3.6): recorded, and the JSON still written
                rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                if gpu:
                    torch.cuda.empty_cache()
            results.append(rec)
            print(fmt_row(rec))
        del x
    today = datetime.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", (torch.cuda.get_device_name().lower() if gpu else "cpu")).strip("-")
    report = dict(
        device=device_name(device),
        dtype=str(dtype),
        date=today,
        matmul_tflops=rate,
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
        versions=dict(
            torch=torch.__version__,
            triton=version("triton"),
            liger_kernel=version("liger-kernel"),
            cut_cross_entropy=version("cut-cross-entropy"),
            cuda=torch.version.cuda,
        ),
        floor="8·M·H·V FLOPs at matmul_tflops",
        peak_memory_method="cuda max_memory_allocated" if gpu else "torch.profiler allocator events",
        results=results,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_smoke" if args.smoke else "_target" if args.target else ""
    path = args.out / f"span_loss_{slug}_{today.replace('-', '')}{tag}.json"  # like the other results
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    ours = [r for r in results if r["row"].startswith("r3fast") and "error" in r]
    if ours:  # a baseline may fail; r3fast's own rows must not
        sys.exit(f"bench_span_loss: {len(ours)} r3fast row(s) failed: {ours[0]['error']}")


if __name__ == "__main__":
    main()
