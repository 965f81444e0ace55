"""The GPU suite's record (`.ci/gpu`): the machine it ran on, and a markdown summary of its results.

    python benchmarks/gpu_report.py env DIR/env.json         # GPU, driver, versions, date, commit
    python benchmarks/gpu_report.py summary DIR [--seconds S]  # DIR/summary.md from DIR's XML + JSON

The summary holds the test counts (and every failure with its message), the span-loss table with its
targets (≥ 2× faster than Liger's fused-linear GRPO loss, ≤ 0.2× its peak memory, within 1.5× of the
matmul floor) and the learner-step table (MFU ≥ 40 %, ≥ 3× TRL's step), each marked met or missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "triton", "transformers", "liger-kernel", "cut-cross-entropy", "trl", "peft")


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    import torch

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    gpu = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        nvidia_smi=gpu or None,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        commit=os.environ.get("R3FAST_GPU_COMMIT") or _run(["git", "rev-parse", "HEAD"]) or None,
        versions=versions,
    )


def junit(path: Path) -> dict:
    """Counts and failures of one pytest JUnit XML file."""
    if not path.is_file():
        return {"missing": True}
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            out["failed"] += 1
            out["failures"].append((name, (bad.get("message") or "")[:300]))
        elif case.find("skipped") is not None:
            out["skipped"] += 1
        else:
            out["passed"] += 1
    return out


def test_log(path: Path) -> dict:
    """Counts, failures and the slowest tests from a step's line-per-outcome log (tests/conftest.py,
    R3FAST_TEST_LOG): what a step killed at its timeout ran, since it wrote no XML."""
    if not path.is_file():
        return {"missing": True}
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "slowest": []}
    times: dict[str, float] = {}
    for raw in path.read_text().splitlines():
        rec = json.loads(raw)
        times[rec["nodeid"]] = times.get(rec["nodeid"], 0.0) + rec["seconds"]
        if rec["outcome"] == "failed":
            out["failed"] += 1
            out["failures"].append((rec["nodeid"], rec.get("message", "")))
        elif rec["when"] == "call" or rec["outcome"] == "skipped":
            out[rec["outcome"]] += 1
    out["slowest"] = sorted(times.items(), key=lambda kv: -kv[1])[:5]
    out["seconds"] = sum(times.values())
    return out


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "**missed**"


def span_loss_section(records: list[dict], elem_bytes: int) -> list[str]:
    lines = ["| N | V | H | row | median ms | peak MiB | × floor |", "|---:|---:|---:|---|---:|---:|---:|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['N']} | {r['V']} | {r['H']} | {r['row']} | {r['error'][:80]} | | |")
        else:
            lines.append(
                f"| {r['N']} | {r['V']} | {r['H']} | {r['row']} | {r['median_ms']:.2f} | "
                f"{r['peak_mib']:.0f} | {r['x_floor']:.2f} |"
            )
    by = {r["row"]: r for r in records if "error" not in r}
    ours, liger = by.get("r3fast triton"), by.get("liger chunked")
    if ours and liger:
        speed, mem = liger["median_ms"] / ours["median_ms"], ours["peak_mib"] / max(liger["peak_mib"], 1e-9)
        grads = (ours["V"] + ours["N"]) * ours["H"] * elem_bytes / 2**20  # same dtype as the inputs
        extra_ours, extra_liger = ours["peak_mib"] - grads, liger["peak_mib"] - grads
        lines += [
            "",
            f"- r3fast triton vs Liger fused-linear GRPO: {speed:.2f}× faster (target ≥ 2×: "
            f"{_verdict(speed >= 2)}), {mem:.3f}× its peak memory (target ≤ 0.2×: {_verdict(mem <= 0.2)})",
            f"- the gradients every row must return, dW [V, H] + dh [N, H], are {grads:.0f} MiB of each peak;"
            f" above them r3fast triton takes {extra_ours:.0f} MiB, Liger {extra_liger:.0f} MiB"
            f" ({extra_ours / max(extra_liger, 1e-9):.3f}×)",
            f"- r3fast triton at {ours['x_floor']:.2f}× the matmul floor (target ≤ 1.5×: "
            f"{_verdict(ours['x_floor'] <= 1.5)})",
        ]
    return lines


def learner_section(report: dict) -> list[str]:
    rows = report.get("rows") or report.get("results") or []
    if not rows:
        return ["(no rows)"]
    keys = [
        k for k in rows[0] if isinstance(rows[0][k], int | float | str) and not isinstance(rows[0][k], bool)
    ]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    for name, value in (report.get("targets") or {}).items():
        lines.append(f"- {name}: {value}")
    return lines


def summary(out: Path, seconds: float | None) -> str:
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    lines = [
        f"# GPU suite — {env.get('gpu') or 'no GPU (dry run)'}",
        "",
        f"- date: {env.get('date')}; commit {env.get('commit')}; wall time {seconds or 0:.0f} s",
        f"- nvidia-smi: {env.get('nvidia_smi')}; CUDA {env.get('cuda')}; Python {env.get('python')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
        "",
        "## Tests",
        "",
    ]
    steps = (out / "steps.log").read_text() if (out / "steps.log").is_file() else ""
    for label, name, step in (
        ("kernel tests (all, on CUDA)", "tests_kernels", "kernel-tests"),
        ("CUDA-marked", "tests_cuda", "cuda-tests"),
        ("extra tests", "tests_extra", "extra-tests"),
    ):
        t, log = junit(out / f"{name}.xml"), test_log(out / f"{name}.jsonl")
        if t.get("missing") and log.get("missing"):
            ran = re.search(rf"^gpu: step {step}: (.*)$", steps, re.M)
            if ran:
                lines.append(f"- {label}: ran ({ran[1]}) but left no XML or test log: see tests.log")
            elif name != "tests_extra":
                lines.append(f"- {label}: did not run")
            continue
        cut = t.get("missing")  # no XML but a log: the step was stopped before pytest finished
        if cut:
            t = log
        stop = " — **stopped before the end** (no XML: the step's timeout?)" if cut else ""
        lines.append(f"- {label}: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped{stop}")
        lines += [f"  - FAILED `{n}`: {m}" for n, m in t["failures"]]
        if not log.get("missing"):
            slow = ", ".join(f"`{n.split('::')[-1]}` {sec:.1f} s" for n, sec in log["slowest"])
            lines.append(f"  - {log['seconds']:.0f} s in tests; slowest: {slow}")
    if steps:  # `gpu: step NAME: S s of LIMIT s, rc RC`, one line a step
        lines += ["", "## Steps (wall time against each step's timeout)", ""]
        lines += [f"- {ln.removeprefix('gpu: step ')}" for ln in steps.splitlines()]
    for path in sorted(out.glob("span_loss_*.json")):
        rep = json.loads(path.read_text())
        lines += ["", f"## Span loss fwd+bwd ({path.name}; {rep['dtype']}, matmul {rep['matmul_tflops']:.0f} "
                  "TFLOP/s measured)", ""]  # fmt: skip
        elem = 4 if rep["dtype"] == "torch.float32" else 2
        lines += span_loss_section(rep["results"], elem)
    for path in sorted(out.glob("vs_trl_*.json")):
        lines += ["", f"## Learner step ({path.name})", ""]
        lines += learner_section(json.loads(path.read_text()))
    if (out / "memory.json").is_file():
        mem = json.loads((out / "memory.json").read_text())
        lines += ["", "## Learner memory by component (MiB, memory.json)", ""]
        lines += learner_section({"rows": [{"setting": k, **v} for k, v in mem["settings"].items()]})
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("path", type=Path)
    p = sub.add_parser("summary")
    p.add_argument("dir", type=Path)
    p.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    if args.cmd == "env":
        args.path.write_text(json.dumps(environment(), indent=1))
    else:
        print(summary(args.dir, args.seconds))


if __name__ == "__main__":
    main()
