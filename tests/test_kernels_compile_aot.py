"""Every Triton kernel in kernels/ compiled ahead of time for the GPUs, on this CPU, on every CI run.

`benchmarks/ptxas_sweep.py --check` (in a subprocess: this process runs Triton's interpreter) catches
each launcher's real kernel call, lets Triton's runtime binder specialise it as a GPU launch would
(contiguous, stride-1 constants, 16-byte aligned), and compiles every tile config the autotuner can
pick, for bf16, fp16 and fp32 (each fp32 precision), for sm_90 and sm_80, with Triton's bundled ptxas.
It fails on a compile error, a register spill at sm_90, shared memory past the target's limit or
above the autotuner's own estimate, or an int32 offs_k·stride product. No GPU is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "benchmarks" / "ptxas_sweep.py"
KERNELS = {"_span_fwd_kernel": "fwd", "_span_bwd_kernel": "bwd", "_span_dz_kernel": "dz"}  # sweep names

needs_nvidia = pytest.mark.skipif(
    importlib.util.find_spec("triton.backends.nvidia") is None, reason="needs triton's NVIDIA backend"
)


def pin(path: Path, name: str) -> str | None:
    m = re.search(rf"^{name}==(\S+)", path.read_text(), re.M)
    return m.group(1) if m else None


def test_ci_triton_is_the_gpu_machines():
    import triton

    gpu = pin(ROOT / ".ci" / "constraints-gpu-mirror.txt", "triton")
    assert gpu and pin(ROOT / ".ci" / "constraints-cpu.txt", "triton") == gpu
    assert triton.__version__ == gpu, f"triton {triton.__version__} here, {gpu} on the GPU machine"


def test_m_bucket_keeps_few_rows_apart_from_many():
    from r3fast.kernels.triton_common import m_bucket

    buckets = [m_bucket(m) for m in range(1, 20000, 37)]
    assert m_bucket(1) == m_bucket(16) == 16 and m_bucket(17) == 64 and m_bucket(4096) == 4096
    assert m_bucket(4097) == m_bucket(10**6) == 16384 and buckets == sorted(buckets)
    assert len(set(buckets)) == 6


@needs_nvidia
def test_every_kernel_config_compiles_for_the_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(SWEEP), "--check", "--jobs", "2", "--out", str(tmp_path), "--name", "aot.json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    print(res.stdout[-6000:], res.stderr[-3000:])
    report = json.loads((tmp_path / "aot.json").read_text())
    rows = report["rows"]
    bad = [r for r in rows if r["error"] or (r["arch"] == 90 and (r["spill_stores"] or r["spill_loads"]))
           or r["smem"] > r["smem_limit"] or r["smem"] > r["estimate"]]  # fmt: skip
    assert not bad, bad[:5]
    assert not any(report["int32_stride_products"].values()), report["int32_stride_products"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # every @triton.jit kernel of kernels/ is covered, for every dtype and both targets
    import r3fast.kernels  # the installed package: the GPU suite runs from a tree without kernels/

    src = "\n".join(p.read_text() for p in Path(r3fast.kernels.__file__).parent.glob("*.py"))
    jitted = set(re.findall(r"@triton\.jit\s*\ndef (\w+)", src))
    assert {n for n in jitted if n.endswith("_kernel")} == set(KERNELS), jitted
    seen = {(r["kernel"], r["dtype"], r["arch"]) for r in rows}
    assert seen == {(k, d, a) for k in KERNELS.values() for d in ("bf16", "fp16", "fp32") for a in (90, 80)}
    assert {r["precision"] for r in rows if r["dtype"] == "fp32"} == {"ieee", "tf32x3", "tf32"}
    # the autotune key separates M buckets, and the tuned choice persists across processes
    for kind, tune in report["autotune"].items():
        assert tune["key"][0] == "M_BUCKET" and tune["cache_results"], (kind, tune)
