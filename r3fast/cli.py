"""`r3fast eval | mine | train` — the command line.

r3fast eval  --task countdown --model smollm2-135m-instruct --n 50
r3fast mine  --task countdown --model smollm2-135m-instruct --tries 4 --n 256 --out failures.jsonl
r3fast train --preset countdown-demo            # or --config run.yaml, plus --section.field overrides
"""

from __future__ import annotations

import argparse
import json
import sys

from . import presets

__all__ = ["main"]


def _task_options(raw: str | None) -> dict:
    if not raw:
        return {}
    import yaml

    opts = yaml.safe_load(raw)
    if not isinstance(opts, dict):
        raise SystemExit(f"--task-options must be a mapping like '{{num_numbers: 2}}', got {raw!r}")
    return opts


def _setup(args: argparse.Namespace):
    """(task, tokenizer, sampler) for eval/mine; the vLLM sampler loads its own weights, so the
    HF model is only loaded for the HF sampler."""
    from .models import load_model, load_tokenizer, resolve_device
    from .sampling import HFSampler, VLLMSampler
    from .tasks import get_task

    task = get_task(args.task, **_task_options(args.task_options))
    if args.sampler == "vllm":
        return task, load_tokenizer(args.model), VLLMSampler(args.model)
    model, tok = load_model(args.model, device=resolve_device(args.device))
    return task, tok, HFSampler(model, tok)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task", default="countdown", help="registered task name (see r3fast.tasks.available_tasks)"
    )
    p.add_argument(
        "--task-options",
        default=None,
        help="YAML mapping of task options, e.g. '{num_numbers: 2}'",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, local dir or HF hub id")
    p.add_argument("--n", type=int, default=50, help="examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--max-answer-tokens", type=int, default=64)
    p.add_argument("--out", default=None, help="write JSON (eval) / JSONL (mine) here")


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_eval_table
    from .sampling import SamplingParams

    task, tok, sampler = _setup(args)
    examples = task.dataset(args.n, seed=args.seed, split=args.split)
    res = evaluate(
        sampler,
        tok,
        task,
        examples,
        answer_params=SamplingParams(
            temperature=args.temperature, max_new_tokens=args.max_answer_tokens, seed=args.seed
        ),
        reflection_params=SamplingParams(
            temperature=args.temperature, max_new_tokens=args.max_reflection_tokens, seed=args.seed + 1
        ),
    )
    print(f"task={args.task} model={args.model} split={args.split} temperature={args.temperature}")
    print(format_eval_table({"model": res}))
    if args.out:
        from .atomic import write_text_atomic

        write_text_atomic(
            args.out,
            json.dumps({"summary": res.summary(), "args": vars(args), "records": res.records}, indent=1),
        )
        print(f"wrote {args.out}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from .mining import mine_failures, write_jsonl_atomic
    from .sampling import SamplingParams

    if not args.out:
        raise SystemExit("r3fast mine needs --out failures.jsonl")
    task, tok, sampler = _setup(args)
    examples = task.dataset(args.n, seed=args.seed, split="train")
    params = SamplingParams(
        temperature=args.temperature, max_new_tokens=args.max_answer_tokens, seed=args.seed
    )
    res = mine_failures(sampler, tok, task, examples, tries=args.tries, params=params, model_name=args.model)
    write_jsonl_atomic(args.out, res.records)
    print(json.dumps(res.summary(), indent=1))
    print(f"wrote {len(res.records)} failures to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .config import R3Config, apply_overrides, load_config
    from .trainer import R3Trainer

    if args.config and args.preset:
        raise SystemExit("give --config or --preset, not both")
    cfg = load_config(args.config) if args.config else presets.get(args.preset) if args.preset else R3Config()
    try:
        apply_overrides(cfg, overrides)
    except ValueError as e:
        raise SystemExit(f"r3fast train: {e}") from None
    summary = R3Trainer(cfg, resume=args.resume).train()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("vanilla", "trained")}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r3fast", description="Reflect, Retry, Reward — fast GRPO on reflections"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("eval", help="1st try, then reflection + 2nd try on failures")
    _common(p)
    p.add_argument("--split", default="eval", choices=["train", "eval"])
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--max-reflection-tokens", type=int, default=128)
    p = sub.add_parser("mine", help="sample K first attempts per example, keep the failures as JSONL")
    _common(p)
    p.add_argument("--tries", type=int, default=4, help="K: first attempts per example")
    p.add_argument("--temperature", type=float, default=0.9)
    p = sub.add_parser(
        "train", help="R3 GRPO training (extra --section.field value pairs override the config)"
    )
    p.add_argument("--config", default=None, help="YAML or TOML file")
    p.add_argument("--preset", default=None, choices=sorted(presets.PRESETS))
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in trainer.output_dir"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.cmd != "train" and rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.cmd == "eval":
        return cmd_eval(args)
    if args.cmd == "mine":
        return cmd_mine(args)
    return cmd_train(args, rest)


if __name__ == "__main__":
    sys.exit(main())
