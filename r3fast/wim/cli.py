"""`r3fast wim`: baseline vs WiM on N examples of long-context tasks; a table and a JSON file.

r3fast wim --model smollm2-135m-instruct --task multihop cwe --n 30 --out wim.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from typing import Any

from ..env_report import cpu_info

__all__ = ["add_wim_parser", "cmd_wim"]


def add_wim_parser(sub: Any) -> None:
    p = sub.add_parser(
        "wim", help="Writing in the Margins vs a plain long-context answer, same examples", allow_abbrev=False
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, local dir or HF hub id")
    p.add_argument("--task", nargs="+", default=["multihop"], help="long-context tasks: multihop, cwe")
    p.add_argument(
        "--task-options",
        default=None,
        help="YAML mapping for every task, or one per task: '{cwe: {num_common: 5}}'",
    )
    p.add_argument("--context-tokens", type=int, default=2048, help="approximate document length, tokens")
    p.add_argument("--n", type=int, default=20, help="examples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="eval", choices=["train", "eval"])
    p.add_argument("--segment-tokens", type=int, default=512)
    p.add_argument("--margin-tokens", type=int, default=100)
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--no-classify", action="store_true", help="keep every margin (no relevance pass)")
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--device", default="auto", help="HF path only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=None, help="write the summary and every record as JSON here")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. what else ran)")


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    cpu = cpu_info()["cpu"]
    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu: {cpu}",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": os.getloadavg(),
    }
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if args.sampler == "vllm":
        import vllm

        env["vllm"] = vllm.__version__
    return env


def _backend(args: argparse.Namespace) -> tuple[Any, Any]:
    from r3fast.models import load_model, load_tokenizer, resolve_device

    if args.sampler == "vllm":
        from r3fast.config import R3Config
        from r3fast.sampling import build_sampler

        cfg = R3Config()
        cfg.model.name, cfg.sampler.backend, cfg.sampler.max_model_len = args.model, "vllm", 8192
        sampler = build_sampler(cfg, dtype="auto", cpu_threads=args.threads)  # the checkpoint's dtype
        return sampler, load_tokenizer(args.model)
    return load_model(args.model, device=resolve_device(args.device))


def cmd_wim(args: argparse.Namespace) -> int:
    import torch

    from r3fast.errors import UserError
    from r3fast.tasks import get_task
    from r3fast.validate import parse_task_options
    from r3fast.wim.config import WimConfig
    from r3fast.wim.evaluate import evaluate_wim, format_wim_table, summarize

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = WimConfig(
        segment_tokens=args.segment_tokens,
        margin_tokens=args.margin_tokens,
        answer_tokens=args.answer_tokens,
        classify=not args.no_classify,
    )
    raw = parse_task_options(args.task_options)
    per_task = any(name in raw for name in args.task)  # {cwe: {...}, multihop: {...}} or one mapping
    try:  # a bad name or option fails here, before the model loads
        tasks = {
            name: get_task(
                name, context_tokens=args.context_tokens, **(raw.get(name, {}) if per_task else raw)
            )
            for name in args.task
        }
    except (ValueError, TypeError) as e:
        raise UserError(f"r3fast wim: {e}") from None
    env = _environment(args)
    start = time.perf_counter()
    model, tok = _backend(args)
    env["load_s"] = time.perf_counter() - start
    results: dict[str, Any] = {}
    for name, task in tasks.items():
        examples = task.dataset(args.n, seed=args.seed, split=args.split)
        records = evaluate_wim(model, tok, task, examples, cfg, progress=not args.no_progress)
        results[name] = {"summary": summarize(records, getattr(task, "metric", "accuracy"), seed=args.seed)}
        results[name]["records"] = records
    env["wall_s"] = time.perf_counter() - start
    env["load_average_end"] = os.getloadavg()
    table = format_wim_table({k: v["summary"] for k, v in results.items()})
    print(f"model={args.model} sampler={args.sampler} context~{args.context_tokens} tokens, {env['device']}")
    print(table)
    if args.out:
        from r3fast.atomic import write_text_atomic

        payload = {
            "environment": env,
            "args": vars(args),
            "config": vars(cfg),
            "table": table,
            "tasks": results,
        }
        write_text_atomic(args.out, json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.out}")
    return 0
