"""`r3fast eval | mine | train` — the command line.

r3fast eval  --task countdown --model smollm2-135m-instruct --n 50
r3fast mine  --task countdown --model smollm2-135m-instruct --tries 4 --n 256 --out failures.jsonl
r3fast train --preset countdown-demo            # or --config run.yaml, plus --section.field overrides
r3fast env                                      # versions, devices, and a span-loss self-test

Every mistake in what was asked for (a flag, a config value, a file, a name, a run directory in
the way) prints one line `r3fast: error: ...` and exits 2, before torch is imported where the
check allows; a run that cannot go on (it diverged) prints one line and exits 1. A traceback
means a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from . import presets
from .cli_eval import _verbose, add_eval_mine_parsers, cmd_eval, cmd_mine, print_deprecations
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
    if os.environ.get("RANK", "0") == "0":
        if cfg.metrics.progress:  # before any library speaks
            from .logging_setup import run_header

            m, s = cfg.model, cfg.sampler
            print(run_header("train", model=m.name, task=cfg.task.name, device=m.device, sampler=s.backend,
                             run_dir=cfg.trainer.output_dir), flush=True)  # fmt: skip
        print_deprecations(cfg)
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
            free = " (free to change on --resume)" if f.metadata.get("resume") == "free" else ""
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"cfg:{section}.{f.name}",
                default=argparse.SUPPRESS,
                metavar=describe(hints[f.name]).upper().replace(" ", ""),
                help=f"{docs.get(f.name, '')} (default: {shown}){free}".replace("%", "%%"),
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="r3fast", description="Reflect, Retry, Reward — fast GRPO on reflections", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_eval_mine_parsers(sub)
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
    _verbose(p)
    _add_config_fields(p)
    from .wim.cli import add_wim_parser  # WiM's flags live with WiM (r3fast/wim/cli.py)

    add_wim_parser(sub)
    _verbose(sub.choices["wim"])
    p = sub.add_parser(
        "env", help="versions, CPU/GPU, backends and a span-loss self-test", allow_abbrev=False
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--no-self-test", action="store_true", help="skip the ~10 s span-loss self-test")
    return parser


def cmd_env(args: argparse.Namespace) -> int:
    from .env_report import env_report, format_report

    report = env_report(self_test=not args.no_self_test)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    statuses = [r["status"] for r in report.get("span_loss_self_test", [])]
    return 1 if any(s != "ok" and not s.startswith("skipped") for s in statuses) else 0  # a failing kernel


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
    if args.cmd == "env":
        return cmd_env(args)
    from .logging_setup import quiet_libraries

    quiet_libraries(verbose=args.verbose)
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
    except KeyboardInterrupt:  # Ctrl-C: the run directory keeps its newest checkpoint (atomic writes)
        code, message = 130, "interrupted (SIGINT); --resume continues a run from its newest checkpoint"
    message = " ".join(message.split())
    print(f"r3fast: error: {message}", file=sys.stderr)
    raise CLIExit(code, message)


if __name__ == "__main__":
    sys.exit(main())
