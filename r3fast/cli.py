"""`r3fast eval | mine | train` — the command line.

r3fast eval  --task countdown --model smollm2-135m-instruct --n 50
r3fast mine  --task countdown --model smollm2-135m-instruct --tries 4 --n 256 --out failures.jsonl
r3fast train --preset countdown-demo            # or --config run.yaml, plus --section.field overrides

Every mistake in what was asked for (a flag, a config value, a file, a name, a run directory in
the way) prints one line `r3fast: error: ...` and exits 2, before torch is imported where the
check allows; a run that cannot go on (it diverged) prints one line and exits 1. A traceback
means a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from . import presets
from .coerce import describe, field_docs
from .config import SECTIONS, R3Config, apply_overrides, load_config
from .errors import RunError, UserError

__all__ = ["main"]


class CLIExit(SystemExit):
    """SystemExit with the exit code and the one-line message (what tests match on)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not usage + message
        raise UserError(f"{self.prog}: {message}")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _task_options(raw: str | None) -> dict:
    if not raw:
        return {}
    import yaml

    try:
        opts = yaml.safe_load(raw)
    except yaml.YAMLError:
        opts = None
    if not isinstance(opts, dict):
        raise UserError(f"--task-options must be a mapping like '{{num_numbers: 2}}', got {raw!r}")
    return opts


def _check_eval_mine(args: argparse.Namespace):
    """The light checks of eval/mine (task, model, output path); returns the task."""
    from .model_names import check_model_name
    from .validate import build_task, check_out_path

    task = build_task(args.task, _task_options(args.task_options))
    check_model_name(args.model)
    if args.sampler == "vllm":
        from .validate import need_package

        need_package("vllm")
    if args.out:
        check_out_path(args.out, "--out")
    return task


def _setup(args: argparse.Namespace, task):
    """(tokenizer, sampler) for eval/mine; the vLLM sampler loads its own weights, so the
    HF model is only loaded for the HF sampler."""
    from .models import load_model, load_tokenizer, resolve_device
    from .sampling import HFSampler, VLLMSampler

    if args.sampler == "vllm":
        sampler = VLLMSampler(args.model)
        sampler.wake()  # generation only, no learner: stay awake (a new sampler starts asleep)
        return load_tokenizer(args.model), sampler
    model, tok = load_model(args.model, device=resolve_device(args.device))
    return tok, HFSampler(model, tok)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="countdown", help="registered task name (r3fast.tasks.available_tasks)")
    p.add_argument(
        "--task-options", default=None, help="YAML mapping of task options, e.g. '{num_numbers: 2}'"
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, local dir or HF hub id")
    p.add_argument("--n", type=_count(1), default=50, help="examples (>= 1)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--max-answer-tokens", type=_count(1), default=64)
    p.add_argument("--out", default=None, help="write JSON (eval) / JSONL (mine) here")


def cmd_eval(args: argparse.Namespace) -> int:
    task = _check_eval_mine(args)
    from .evaluate import evaluate, format_eval_table
    from .sampling import SamplingParams

    tok, sampler = _setup(args, task)
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
    if not args.out:
        raise UserError("r3fast mine needs --out failures.jsonl")
    if args.temperature <= 0:
        raise UserError("r3fast mine: --temperature must be > 0 (K greedy tries would all be the same)")
    task = _check_eval_mine(args)
    from .mining import mine_failures, write_jsonl_atomic
    from .sampling import SamplingParams

    tok, sampler = _setup(args, task)
    examples = task.dataset(args.n, seed=args.seed, split="train")
    params = SamplingParams(
        temperature=args.temperature, max_new_tokens=args.max_answer_tokens, seed=args.seed
    )
    res = mine_failures(sampler, tok, task, examples, tries=args.tries, params=params, model_name=args.model)
    write_jsonl_atomic(args.out, res.records)
    print(json.dumps(res.summary(), indent=1))
    print(f"wrote {len(res.records)} failures to {args.out}")
    return 0


def _config_from_args(args: argparse.Namespace, rest: list[str]) -> R3Config:
    if args.config and args.preset:
        raise UserError("give --config or --preset, not both")
    cfg = load_config(args.config) if args.config else presets.get(args.preset) if args.preset else R3Config()
    overrides = [
        x for key, value in vars(args).items() if key.startswith("cfg:") for x in (f"--{key[4:]}", value)
    ]
    return apply_overrides(cfg, overrides + rest)  # rest: unknown --section.field, reported by name


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from .validate import check_train

    cfg = _config_from_args(args, rest)
    flags = dict(resume=args.resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    task = check_train(cfg, **flags)  # everything checkable before torch is imported
    from .trainer import R3Trainer

    summary = R3Trainer(cfg, task=task, **flags).train()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("vanilla", "trained")}, indent=1))
    return 0


def _add_config_fields(p: argparse.ArgumentParser) -> None:
    """Every config field as `--section.field`, with its doc and default, for --help and parsing."""
    for section, cls in SECTIONS.items():
        docs, hints, default = field_docs(cls), typing.get_type_hints(cls), cls()
        group = p.add_argument_group(f"[{section}]", (cls.__doc__ or "").strip())
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            shown = json.dumps(list(value) if isinstance(value, tuple) else value)
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"cfg:{section}.{f.name}",
                default=argparse.SUPPRESS,
                metavar=describe(hints[f.name]).upper().replace(" ", ""),
                help=f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%"),
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="r3fast", description="Reflect, Retry, Reward — fast GRPO on reflections", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("eval", help="1st try, then reflection + 2nd try on failures", allow_abbrev=False)
    _common(p)
    p.add_argument("--split", default="eval", choices=["train", "eval"])
    p.add_argument("--temperature", type=_nonneg_float, default=0.0, help="0: greedy")
    p.add_argument("--max-reflection-tokens", type=_count(1), default=128)
    p = sub.add_parser(
        "mine", help="sample K first attempts per example, keep the failures as JSONL", allow_abbrev=False
    )
    _common(p)
    p.add_argument("--tries", type=_count(1), default=4, help="K: first attempts per example")
    p.add_argument("--temperature", type=_nonneg_float, default=0.9)
    p = sub.add_parser(
        "train",
        help="R3 GRPO training (any config field as --section.field value)",
        description="Config: defaults < --preset or --config file < --section.field flags.",
        allow_abbrev=False,
    )
    p.add_argument("--config", default=None, help="YAML or TOML file, one table per section")
    p.add_argument("--preset", default=None, choices=sorted(presets.PRESETS))
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in trainer.output_dir"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in a non-empty trainer.output_dir"
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="--resume: apply config changes that alter the run's meaning (listed when refused)",
    )
    _add_config_fields(p)
    from .wim.cli import add_wim_parser  # WiM's flags live with WiM (r3fast/wim/cli.py)

    add_wim_parser(sub)
    return parser


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--optim.lr -1e-6` -> `--optim.lr=-1e-6`: argparse reads '-1e-6' as a flag (its negative
    number pattern has no exponent), so the range check would never see the value."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("--") and "." in arg and "=" not in arg and nxt and nxt.startswith("-"):
            try:
                float(nxt)
            except ValueError:
                pass
            else:
                out.append(f"{arg}={nxt}")
                i += 2
                continue
        out.append(arg)
        i += 1
    return out


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = _glue_negative_values(list(sys.argv[1:] if argv is None else argv))
    args, rest = parser.parse_known_args(argv)
    if args.cmd != "train" and rest:
        raise UserError(f"r3fast {args.cmd}: unrecognised arguments: {' '.join(rest)}")
    if args.cmd == "eval":
        return cmd_eval(args)
    if args.cmd == "mine":
        return cmd_mine(args)
    if args.cmd == "wim":
        from .wim.cli import cmd_wim

        return cmd_wim(args)
    return cmd_train(args, rest)


def main(argv: list[str] | None = None) -> int:
    from .progress import quiet_library_bars

    quiet_library_bars()
    try:
        return _run(argv)
    except UserError as e:
        code, message = 2, str(e)
    except RunError as e:
        code, message = 1, str(e)
    message = " ".join(message.split())
    print(f"r3fast: error: {message}", file=sys.stderr)
    raise CLIExit(code, message)


if __name__ == "__main__":
    sys.exit(main())
