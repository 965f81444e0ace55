"""Registers, spills and shared memory of every autotuned span-loss kernel config, without a GPU.

Each (kernel, operand dtype, fp32 precision, tile) is compiled by Triton for sm_90a (H100/H200) on
this machine and assembled by Triton's own ptxas with -v; a config that spills registers to local
memory, or needs more shared memory than the GPU has, is slow or never runs. The tile lists in
`kernels/span_loss_triton.py` and `span_loss_splitv.py` were chosen from this table.

    python benchmarks/ptxas_sweep.py                 # the configs the kernels autotune over
    python benchmarks/ptxas_sweep.py --grid          # a wider grid of candidate tiles (slow)

Needs a Triton build with the NVIDIA backend; run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from r3fast.kernels import span_loss_splitv as splitv  # noqa: E402
from r3fast.kernels import span_loss_triton as k  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource, compile  # noqa: E402

V, H = 151936, 1536  # Qwen2.5-1.5B's lm_head
H100_SMEM = 232448  # bytes of shared memory per block (opt-in) on sm_90
COMMON = {"idx_ptr": "*i64", "y_ptr": "*i64", "M": "i32", "stride_hn": "i32", "stride_hh": "i32",
          "stride_wv": "i32", "stride_wh": "i32", "inv_temp": "fp32"}  # fmt: skip
GRADS = {"lse_ptr": "*fp32", "g_ptr": "*fp32", "scale_ptr": "*fp32"}


def signature(kind: str, dt: str) -> tuple:
    io = {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", **COMMON}
    if kind == "fwd":
        return k._span_fwd_kernel, {"part_ptr": "*fp32", **io}, {"S": 4}
    if kind == "bwd":
        return k._span_bwd_kernel, {"dh_ptr": "*fp32", "dw_ptr": "*fp32", **GRADS, **io}, {"COMPUTE_DW": True}
    sig = {"dz_ptr": f"*{dt}", "v0": "i32", "VC": "i32", "stride_dz": "i32", **GRADS, **io}
    return splitv._span_dz_kernel, sig, {}


def assemble(kind: str, dt: str, precision: str, tile: tuple) -> dict:
    bm, bv, bk, warps, stages = tile
    fn, sig, extra = signature(kind, dt)
    const = dict(V=V, H=H, BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk, FP32_DOT=dt == "fp32", PRECISION=precision,
                 **extra)  # fmt: skip
    if kind != "fwd":
        const["SCALED"] = dt == "fp16"
    full = {name: sig.get(name, "constexpr") for name in fn.arg_names}
    ck = compile(
        ASTSource(fn, full, const),
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=warps, num_stages=stages),
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ck.asm["ptx"])
        res = subprocess.run(
            [get_ptxas(90).path, "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    log = res.stdout + res.stderr

    def num(pattern: str) -> int | None:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return dict(
        kernel=kind, dtype=dt, precision=precision, tile=list(tile), smem=ck.metadata.shared,
        registers=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
        spill_loads=num(r"(\d+) bytes spill loads"), fits=ck.metadata.shared <= H100_SMEM,
    )  # fmt: skip


def cases(grid: bool):
    tiles = {"fwd": k.FWD_TILES, "bwd": k.BWD_TILES, "dz": splitv.DZ_TILES}
    wide = [
        (m, v, kk, w, 3) for m, v, kk, w in itertools.product((64, 128), (64, 128, 256), (32, 64), (4, 8))
    ]
    for kind, dt in itertools.product(("fwd", "dz", "bwd"), ("bf16", "fp16", "fp32")):
        bits = 32 if dt == "fp32" else 16
        chosen = tiles[kind][bits] if not grid else [t for t in wide if kind != "fwd" or t[0] == 64]
        for precision in ("ieee", "tf32x3", "tf32") if dt == "fp32" else ("ieee",):
            for tile in chosen:
                yield kind, dt, precision, tile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", action="store_true", help="a wider grid of candidate tiles")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rows = []
    print(f"{'kernel':<4} {'dtype':<5} {'prec':<7} {'tile (M,V,K,warps,stages)':<26} {'smem':>7} {'regs':>5} "
          f"{'spill st':>9} {'spill ld':>9}")  # fmt: skip
    for case in cases(args.grid):
        r = assemble(*case)
        rows.append(r)
        flag = "" if r["fits"] and not r["spill_stores"] else "  <-"
        head = f"{r['kernel']:<4} {r['dtype']:<5} {r['precision']:<7} {str(tuple(r['tile'])):<26}"
        cols = (r["smem"], r["registers"], r["spill_stores"], r["spill_loads"])
        print(f"{head} {cols[0]:>7} {cols[1]!s:>5} {cols[2]!s:>9} {cols[3]!s:>9}{flag}")
    today = datetime.date.today().strftime("%Y%m%d")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ptxas_sm90_{today}{'_grid' if args.grid else ''}.json"
    report = dict(
        date=datetime.date.today().isoformat(), target="sm_90a", V=V, H=H, triton=triton.__version__,
        ptxas=get_ptxas(90).version, smem_limit=H100_SMEM, rows=rows,
    )  # fmt: skip
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
