"""Every span-loss kernel compiled ahead of time for the GPUs, on a machine without one.

Each launcher (`triton_forward`, `atomic_backward`, `splitv_backward`) is called on CPU tensors
laid out as a real launch lays them (contiguous, 16-byte aligned, Qwen2.5-1.5B's lm_head: V =
151936, H = 1536, M = 4093 rows); its kernel call is caught, and Triton's own runtime binder turns
the arguments into the signature and specialisation a GPU launch compiles (strides of 1 become
constants, 16-divisible ints and aligned pointers get their attributes). Every tile config the
autotuner can pick for that launch (its operand width, pruned by the target's shared memory) is
then compiled by `triton.compile` for sm_90 (H100/H200) and sm_80 (A100), and the PTX assembled by
Triton's bundled ptxas with -v for registers and spills.

    python benchmarks/ptxas_sweep.py                       # table + JSON, sm_90 and sm_80
    python benchmarks/ptxas_sweep.py --check --jobs 2      # exit 1 on a failure (the CI test)

A case fails on a compile error, on a register spill at sm_90, on shared memory past the target's
limit, or on shared memory above the estimate the autotuner prunes by (`smem_bytes`: it must be an
upper bound, or a config that cannot fit would be compiled and dropped). Run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from r3fast.kernels import span_loss_splitv as splitv  # noqa: E402
from r3fast.kernels import span_loss_triton as k  # noqa: E402
from r3fast.kernels import triton_common as common  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

V, H, M = 151936, 1536, 4093  # Qwen2.5-1.5B's lm_head; M not a multiple of 16, as most launches
SMEM = {90: 232448, 80: 166912}  # opt-in shared memory per block: H100/H200, A100
SPLITS = 8  # the forward's split count on an H100 at M ≈ 4096 (num_splits: 4·132 SMs // 64 blocks)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISIONS = {"ieee": "highest", "tf32x3": "high", "tf32": "medium"}  # torch's names for each


class _Caught(Exception):
    """Raised by the stand-in kernel: the launcher's arguments are caught, nothing runs."""

    def __init__(self, args, kwargs):
        self.args_, self.kwargs = args, kwargs


class _Catch:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise _Caught(args, kwargs)

        return launch


def _launch(kind: str, dt: str, precision: str, need_dw: bool = True, transposed: bool = False):
    """(autotuner, positional args, keyword args) of one real launch of `kind`; `transposed`: h and W
    column-major (strides (1, N) and (1, V)) instead of contiguous."""
    dtype = DTYPES[dt]
    n = M + 7  # N > M rows; empty: no memory is touched
    h, w = (torch.empty(H, n, dtype=dtype).T, torch.empty(H, V, dtype=dtype).T) if transposed else (
        torch.empty(n, H, dtype=dtype), torch.empty(V, H, dtype=dtype))  # fmt: skip
    idx = torch.arange(M, dtype=torch.int64)
    y = torch.zeros(M, dtype=torch.int64)
    lse, g = torch.zeros(M), torch.ones(M)
    name, module, tuner = {"fwd": ("_fwd", k, k._fwd), "bwd": ("_bwd", k, k._bwd),
                           "dz": ("_dz", splitv, splitv._dz)}[kind]  # fmt: skip
    old_prec, old_fn, old_splits = torch.get_float32_matmul_precision(), getattr(module, name), k.num_splits
    torch.set_float32_matmul_precision(PRECISIONS[precision])
    setattr(module, name, _Catch())
    k.num_splits = lambda m, v, device: SPLITS
    try:
        if kind == "fwd":
            k.triton_forward(h, w, idx, y, 0.9)
        elif kind == "bwd":
            k.atomic_backward(g, h, w, idx, y, lse, 0.9, need_dw=need_dw)
        else:
            splitv.splitv_backward(g, h, w, idx, y, lse, 0.9)
    except _Caught as c:
        return tuner, c.args_, c.kwargs
    finally:
        torch.set_float32_matmul_precision(old_prec)
        setattr(module, name, old_fn)
        k.num_splits = old_splits
    raise RuntimeError(f"{kind}: the launcher never called its kernel")


def configs(tuner, args, kwargs, arch: int) -> list[triton.Config]:
    """The configs the autotuner can pick for this launch on `arch` (its own prune, the target's limit)."""
    named = dict(zip(tuner.arg_names, args))
    limit = common.smem_limit  # the prune looks it up in triton_common: the target's figure goes there
    common.smem_limit = lambda: SMEM[arch]
    try:
        return tuner.early_config_prune(tuner.configs, named, **kwargs)
    finally:
        common.smem_limit = limit


def source(tuner, args, kwargs, cfg: triton.Config, arch: int):
    """(ASTSource, options) of one launch with `cfg`, as JITFunction.run builds them on a GPU."""
    fn = tuner.fn
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kw = {**kwargs, **cfg.all_kwargs(), "debug": False}
    bound, spec, opts = binder(*args, **kw)  # the runtime's own specialisation of these arguments
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    return ASTSource(fn, signature, constexprs, attrs), options.__dict__


def compile_case(case: tuple) -> dict:
    """Compile one (kernel, dtype, precision, need_dw, arch, config index); registers, spills, smem."""
    kind, dt, precision, need_dw, arch, ci = case
    tuner, args, kwargs = _launch(kind, dt, precision, need_dw)
    cfg = configs(tuner, args, kwargs, arch)[ci]
    target = GPUTarget("cuda", arch, 32)
    src, options = source(tuner, args, kwargs, cfg, arch)
    tile = [*(cfg.kwargs[b] for b in ("BLOCK_M", "BLOCK_V", "BLOCK_K")), cfg.num_warps, cfg.num_stages]
    row = dict(kernel=kind, dtype=dt, precision=precision, compute_dw=need_dw, arch=arch,
               tile=tile,
               estimate=common.smem_bytes(*tile[:3], cfg.num_stages, DTYPES[dt].itemsize, kind),
               smem_limit=SMEM[arch], error=None)  # fmt: skip
    t0 = time.perf_counter()
    try:
        ck = triton.compile(src, target=target, options=options)
    except Exception as e:  # a compile error is a result: reported, and fails --check
        return {**row, "error": f"{type(e).__name__}: {str(e)[:400]}"}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ck.asm["ptx"])
        ptxas = get_ptxas(arch).path
        res = subprocess.run([ptxas, f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}", "-v", str(src),
                              "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True)  # fmt: skip
    log = res.stdout + res.stderr
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, log)) else None
    return {**row, "smem": ck.metadata.shared, "registers": num(r"Used (\d+) registers"),
            "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads")}  # fmt: skip


def int32_stride_products(kind: str, arch: int = 90) -> list[str]:
    """TTIR lines that multiply a tensor in int32, for a launch with h and W column-major (the
    strides along H are then runtime ints, not the constant 1): offs_k·stride must be int64, or a
    column-major W with V·H ≥ 2³¹ (or a transposed h) wraps. Empty: every such product is int64."""
    tuner, args, kwargs = _launch(kind, "bf16", "ieee", transposed=True)
    cfg = configs(tuner, args, kwargs, arch)[0]
    src, options = source(tuner, args, kwargs, cfg, arch)
    ttir = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options).asm["ttir"]
    return [ln.strip() for ln in ttir.splitlines() if re.search(r"arith\.muli .*: tensor<[0-9x]*xi32>", ln)]


def failures(r: dict) -> list[str]:
    """Why a compiled case fails the check (empty: it passes)."""
    if r["error"]:
        return [r["error"]]
    why = []
    if r["arch"] == 90 and (r["spill_stores"] or r["spill_loads"]):
        why.append(f"spills {r['spill_stores']} B stores / {r['spill_loads']} B loads at sm_90")
    if r["smem"] > r["smem_limit"]:
        why.append(f"shared memory {r['smem']} B > the target's {r['smem_limit']} B")
    if r["smem"] > r["estimate"]:
        why.append(f"shared memory {r['smem']} B > smem_bytes() estimate {r['estimate']} B")
    return why


def cases(archs: list[int]):
    """Every (kernel, dtype, fp32 precision, compute_dw, arch, config) a launch can compile."""
    for arch in archs:
        for kind in ("fwd", "dz", "bwd"):
            for dt in DTYPES:
                for precision in PRECISIONS if dt == "fp32" else ("ieee",):
                    for need_dw in (True, False) if kind == "bwd" else (True,):
                        tuner, args, kwargs = _launch(kind, dt, precision, need_dw)
                        for ci in range(len(configs(tuner, args, kwargs, arch))):
                            yield kind, dt, precision, need_dw, arch, ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SMEM))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    ap.add_argument("--check", action="store_true", help="exit 1 if any case fails")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--name", default=None, help="JSON file name (default ptxas_<date>.json)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    todo = list(cases(args.arch))
    if args.jobs > 1:  # spawn: a forked child of a process that imported torch and triton can hang
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(compile_case, todo))
    else:
        rows = [compile_case(c) for c in todo]
    print(f"{'kernel':<4} {'dtype':<5} {'prec':<6} {'dW':<2} {'sm':<3} {'tile (M,V,K,warps,stages)':<26} "
          f"{'smem':>7} {'est':>7} {'regs':>4} {'spill':>5}")  # fmt: skip
    bad = 0
    for r in rows:
        why = failures(r)
        bad += bool(why)
        head = (f"{r['kernel']:<4} {r['dtype']:<5} {r['precision']:<6} {'y' if r['compute_dw'] else 'n':<2} "
                f"{r['arch']:<3} {str(tuple(r['tile'])):<26}")  # fmt: skip
        if r["error"]:
            print(f"{head}  <- {r['error']}")
            continue
        cols = f"{r['smem']:>7} {r['estimate']:>7} {r['registers']!s:>4} {r['spill_stores']!s:>5}"
        print(f"{head} {cols}{'  <- ' + '; '.join(why) if why else ''}")
    int32 = {kind: int32_stride_products(kind) for kind in ("fwd", "dz", "bwd")}
    for kind, lines in int32.items():
        bad += bool(lines)
        print(f"{kind}: {'int64 stride products' if not lines else 'int32 products: ' + '; '.join(lines)}")
    tuners = {"fwd": k._fwd, "bwd": k._bwd, "dz": splitv._dz}
    autotune = {n: dict(key=list(t.keys), cache_results=bool(t.cache_results)) for n, t in tuners.items()}
    seconds = time.perf_counter() - t0
    print(
        f"{len(rows)} compiles ({len(args.arch)} targets), {bad} failing, {seconds:.0f} s on {args.jobs} jobs"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (args.name or f"ptxas_{datetime.date.today().strftime('%Y%m%d')}.json")
    report = dict(
        date=datetime.date.today().isoformat(), V=V, H=H, M=M, splits=SPLITS, triton=triton.__version__,
        torch=torch.__version__, ptxas={a: get_ptxas(a).version for a in args.arch}, smem_limits=SMEM,
        seconds=round(seconds, 1), jobs=args.jobs, failing=bad, int32_stride_products=int32,
        autotune=autotune, rows=rows,
    )  # fmt: skip
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    sys.exit(1 if args.check and bad else 0)


if __name__ == "__main__":
    main()
