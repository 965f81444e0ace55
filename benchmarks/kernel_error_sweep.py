"""Measure the span loss's error against the float64 oracle over many seeds, to set the tolerances
of tests/test_kernels_span_loss.py from data rather than from one machine's draw.

For every implementation (torch, triton, triton_atomic) and accepted dtype (fp32, bf16, fp16) it
draws `--seeds` problems exactly as the tests do (the test module's own `oracle_case`, `fp16_case`
and, for a quarter of the fp32 draws, `objective_case`: seed s → the s-th combination of loss type,
β, temperature and mask density, or of objective and ratio level, cycling), and records
for each output (loss, logp, entropy, kl, d hidden, d weight) the excess error the test bounds:

    excess = err(impl vs fp64) − err(naive reference in the same dtype vs fp64)

scaled as the test scales it (`error_scale`). The JSON keeps the maximum with its seed and case,
the 99th percentile, and the tolerance the test uses (`margin` × the largest excess seen, rounded
up to one significant digit, never below half an ulp of the output's dtype).

    python benchmarks/kernel_error_sweep.py --seeds 1000 --out benchmarks/results/kernel_errors.json

Runs on CPU under TRITON_INTERPRET=1 (set here), or compiled on CUDA when a GPU is present.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test module: the sweep measures exactly what it runs

import test_kernels_span_loss as T  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MARGIN = 4.0  # tolerance = MARGIN × the largest excess over all seeds (stated in the test's docstring)


def cases() -> list[tuple]:
    return list(itertools.product(T.LOSS_TYPES, [0.0, 0.04], [1.0, 0.7], list(T.DENSITIES)))


def sweep_one(impl: str, dtype_name: str, seeds: range) -> dict:
    combos = cases()
    worst: dict[str, dict] = {}
    samples: dict[str, list[float]] = {}
    for s in seeds:
        torch.manual_seed(s)
        if dtype_name == "fp16":
            case = ("dapo", 0.04, 0.7, "half")
            _, exact, naive, got, zmax = T.fp16_case(impl)
        elif dtype_name == "fp32" and s % 4 == 3:  # a quarter of fp32's draws: the other objectives
            case = T.NEW_OBJECTIVES[(s // 4) % len(T.NEW_OBJECTIVES)]
            _, exact, naive, got, zmax = T.objective_case(*case, impl)
        else:
            case = combos[s % len(combos)]
            _, exact, naive, got, zmax = T.oracle_case(*case, DTYPES[dtype_name], impl)
        for name, g, nv, ex in T.compared(exact, naive, got):
            err, ref = T.rel_errors(g, nv, ex, name, zmax)
            excess = err - ref
            samples.setdefault(name, []).append(excess)
            if name not in worst or excess > worst[name]["excess"]:
                worst[name] = {"excess": excess, "err": err, "naive_err": ref, "seed": s, "case": list(case)}
    out = {}
    for name, xs in samples.items():
        xs = sorted(xs)
        out[name] = {**worst[name], "p99": xs[int(0.99 * (len(xs) - 1))], "n": len(xs)}
    return out


GRADS = ("d hidden", "d weight")  # returned in the input dtype; the rest in fp32


def tolerance(max_excess: float, dtype: torch.dtype, name: str) -> float:
    """MARGIN × the largest excess, rounded up to one significant digit. Floor: half an ulp of the
    output's dtype (one rounding of the result, which the naive reference need not share), so an
    implementation never worse than the naive one over every seed still gets a non-zero bound."""
    floor = torch.finfo(dtype if name in GRADS else torch.float32).eps / 2
    t = max(MARGIN * max_excess, floor)
    p = 10 ** math.floor(math.log10(t))
    return float(f"{math.ceil(t / p) * p:.1g}")  # 3e-05, not 3.0000000000000004e-05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--impls", nargs="+", default=T.IMPLS)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results, t0 = {}, time.time()
    head = ("impl", "dtype", "output", "max excess", "p99", "seed", "tol")
    print("{:14s} {:5s} {:9s} {:>11s} {:>10s} {:>6s} {:>8s}".format(*head))
    for impl, dt in itertools.product(args.impls, args.dtypes):
        t1 = time.time()
        res = sweep_one(impl, dt, seeds)
        for name, r in res.items():
            r["tolerance"] = tolerance(r["excess"], DTYPES[dt], name)
            print(f"{impl:14s} {dt:5s} {name:9s} {r['excess']:11.3g} {r['p99']:10.3g} {r['seed']:6d} "
                  f"{r['tolerance']:8.2g}")
        results[f"{impl}/{dt}"] = {"seconds": round(time.time() - t1, 1), "outputs": res}
    # one tolerance per (dtype, output): the largest over the implementations
    tol = {dt: {name: max(results[f"{i}/{dt}"]["outputs"][name]["tolerance"] for i in args.impls)
                for name in results[f"{args.impls[0]}/{dt}"]["outputs"]} for dt in args.dtypes}
    print(json.dumps(tol, indent=1))
    if args.out:
        import triton

        meta = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
            or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
            "versions": {"torch": torch.__version__, "triton": triton.__version__,
                         "python": platform.python_version()},
            "seeds": [seeds.start, seeds.stop], "margin": MARGIN, "problem": {"N": T.N, "H": T.H, "V": T.V},
            "seconds": round(time.time() - t0, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**meta, "tolerances": tol, "results": results}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
