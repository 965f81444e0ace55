"""`r3fast eval` and `r3fast mine`: their flags, the config they run under, and the commands.

`r3fast eval` is the trainer's own evaluation (r3fast.evaluate.evaluate_as_trained) under a run's
config (`--run DIR`), a config file (`--config`) or the defaults, with the flags given applied over
it; `r3fast mine` samples K first attempts per example and keeps the failures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import R3Config, load_config
from .errors import UserError

__all__ = ["add_eval_mine_parsers", "cmd_eval", "cmd_mine", "print_deprecations"]


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


def _check_eval_mine(args: argparse.Namespace, cfg: R3Config):
    """The light checks of eval/mine (task, model, output path); returns the task."""
    from .model_names import check_model_name
    from .validate import build_configured_task, check_out_path, need_package

    task = build_configured_task(cfg.task)
    check_model_name(cfg.model.name)
    if cfg.sampler.backend == "vllm":
        need_package("vllm")
    if args.out:
        check_out_path(args.out, "--out")
    return task


# eval/mine flags -> the config fields they set (None: the flag was not given)
_FLAG_FIELDS = {
    "task": "task.name",
    "seed": "trainer.seed",
    "device": "model.device",
    "sampler": "sampler.backend",
    "max_answer_tokens": "sampler.max_answer_tokens",
    "max_reflection_tokens": "sampler.max_reflection_tokens",
    "n": "eval.n",
}


def _flag_config(args: argparse.Namespace, cfg: R3Config | None = None) -> tuple[R3Config, list[str]]:
    """(config, the fields the flags changed): the given flags applied over `cfg` (default: defaults)."""
    from .validate import parse_task_options

    cfg = R3Config() if cfg is None else cfg
    before = cfg.flat()
    pairs = [(key, getattr(args, name, None)) for name, key in _FLAG_FIELDS.items()]
    pairs = [(k, v) for k, v in pairs if v is not None]
    if args.task_options is not None:
        pairs.append(("task.options", parse_task_options(args.task_options)))
    if args.model is not None:
        pairs.append(("model.name", args.model))
    for key, value in pairs:
        section, _, name = key.partition(".")
        setattr(getattr(cfg, section), name, value)
    for section in {k.partition(".")[0] for k, _ in pairs}:
        getattr(cfg, section).__post_init__()  # the config's own checks, on the flags' values
    after = cfg.flat()
    return cfg, [k for k in after if after[k] != before[k]]


def _eval_config(args: argparse.Namespace) -> tuple[R3Config, list[str]]:
    """`r3fast eval`'s config: a run's own (`--run DIR`: its config.json, the model its final/), a
    config file (`--config`), or the defaults; then the flags given. Returns the fields the flags
    changed, which make the evaluation differ from the run's."""
    if args.run and args.config:
        raise UserError("r3fast eval: give --run or --config, not both")
    if args.run:
        cfg = _run_config(Path(args.run))
    else:
        cfg = load_config(args.config) if args.config else R3Config()
    cfg, changed = _flag_config(args, cfg)
    return cfg, [k for k in changed if not (args.run and k == "model.name" and args.model is None)]


def _run_config(run: Path) -> R3Config:
    """A run directory's config (config.json), its model set to the run's final/ export."""
    path, final = run / "config.json", run / "final"
    try:
        raw = json.loads(path.read_bytes())
    except OSError as e:
        raise UserError(
            f"--run {run}: cannot read {path} ({e.strerror or e}); is it a run directory?"
        ) from None
    except ValueError as e:
        raise UserError(f"--run {run}: {path} is not JSON ({e})") from None
    if not (final / "config.json").is_file():
        raise UserError(f"--run {run}: no {final} (the run has not finished); use --model <a checkpoint>")
    cfg = R3Config.from_dict(raw)
    cfg.model.name = str(final)
    return cfg


def _sampler_for(cfg: R3Config):
    """(tokenizer, sampler) for eval/mine; the vLLM sampler loads its own weights, so the HF model is
    only loaded for the HF sampler."""
    from .models import load_model, load_tokenizer, resolve_device
    from .sampling import build_sampler

    if cfg.sampler.backend == "vllm":
        sampler = build_sampler(cfg)
        sampler.wake()  # generation only, no learner: stay awake (a new sampler starts asleep)
        return load_tokenizer(cfg.model.name), sampler
    mc = cfg.model
    model, tok = load_model(mc.name, dtype=mc.dtype, device=resolve_device(mc.device))
    return tok, build_sampler(cfg, model, tok)


def _common(p: argparse.ArgumentParser, *, n: int) -> None:
    p.add_argument(
        "--task", default=None, help="task name (r3fast.tasks.available_tasks) or pkg.module:factory"
    )
    p.add_argument(
        "--task-options", default=None, help="YAML mapping of task options, e.g. '{num_numbers: 2}'"
    )
    p.add_argument("--model", default=None, help="embedded name, local dir or HF hub id")
    p.add_argument("--n", type=_count(1), default=None, help=f"examples (>= 1; default {n})")
    p.add_argument("--seed", type=_count(0), default=None, help="default trainer.seed (0)")
    p.add_argument("--device", default=None, help="default model.device (auto)")
    p.add_argument("--sampler", default=None, choices=["hf", "vllm"], help="default sampler.backend (hf)")
    p.add_argument(
        "--max-answer-tokens", type=_count(1), default=None, help="default sampler.max_answer_tokens"
    )
    p.add_argument("--out", default=None, help="write JSON (eval) / JSONL (mine) here")
    _verbose(p)


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show vLLM's and transformers' INFO logging live")


def cmd_eval(args: argparse.Namespace) -> int:
    """The trainer's own evaluation protocol (r3fast.evaluate.evaluate_as_trained) under a config:
    `--run DIR` re-evaluates DIR/final exactly as the run evaluated it (eval_trained_*.json)."""
    cfg, changed = _eval_config(args)
    task = _check_eval_mine(args, cfg)
    from .evaluate import decoding_label, evaluate_as_trained, format_eval_table
    from .logging_setup import run_header

    m, e = cfg.model, cfg.eval
    temperature = e.temperatures[0] if args.temperature is None else args.temperature
    print(run_header("eval", model=m.name, task=cfg.task.name, sampler=cfg.sampler.backend, device=m.device))
    print_deprecations(cfg)
    if args.run and (changed or args.split != "eval" or temperature not in e.temperatures):
        differ = [*changed, *(["--split"] if args.split != "eval" else [])]
        differ += [] if temperature in e.temperatures else [f"temperature {temperature:g}"]
        print(f"note: not the run's own evaluation (changed: {', '.join(differ)})")
    tok, sampler = _sampler_for(cfg)
    res = evaluate_as_trained(
        cfg, sampler, tok, task, temperature=temperature, split=args.split, progress=True
    )
    print(f"task={cfg.task.name} model={m.name} split={args.split} decoding={decoding_label(temperature)} "
          f"(the trainer's protocol: seed {cfg.trainer.seed}, chunks {cfg.sampler.chunk_size})")  # fmt: skip
    print(format_eval_table({"model": res}))
    if args.out:
        from .atomic import write_text_atomic

        payload = {
            "summary": res.summary(),
            "records": res.records,
            "args": vars(args),
            "config": cfg.to_dict(),
        }
        write_text_atomic(args.out, json.dumps(payload, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    if not args.out:
        raise UserError("r3fast mine needs --out failures.jsonl")
    if args.temperature <= 0:
        raise UserError("r3fast mine: --temperature must be > 0 (K greedy tries would all be the same)")
    cfg, _ = _flag_config(args)
    task = _check_eval_mine(args, cfg)
    from .mining import mine_failures, write_jsonl_atomic
    from .sampling import SamplingParams

    tok, sampler = _sampler_for(cfg)
    n, seed = args.n or 50, cfg.trainer.seed
    examples = task.dataset(n, seed=seed, split="train")
    params = SamplingParams(
        temperature=args.temperature, max_new_tokens=cfg.sampler.max_answer_tokens, seed=seed
    )
    res = mine_failures(
        sampler, tok, task, examples, tries=args.tries, params=params, model_name=cfg.model.name
    )
    write_jsonl_atomic(args.out, res.records)
    print(json.dumps(res.summary(), indent=1))
    print(f"wrote {len(res.records)} failures to {args.out}")
    return 0


def print_deprecations(cfg: R3Config) -> None:
    """One line per old field name the config was given with (once the config is valid)."""
    for note in dict.fromkeys(cfg.deprecations):
        print(f"r3fast: {note}", flush=True)


def add_eval_mine_parsers(sub) -> None:
    """The `eval` and `mine` subcommands with their flags."""
    p = sub.add_parser(
        "eval",
        help="1st try, then reflection + 2nd try on failures (the trainer's evaluation protocol)",
        description="Evaluates as the trainer does (its seed streams, chunking, caps and prompts), under "
        "a run's config (--run DIR: DIR/final, reproducing its eval_trained_*.json), a config file "
        "(--config) or the defaults; the flags below override single fields.",
        allow_abbrev=False,
    )
    p.add_argument("--run", default=None, help="a run directory: its config.json, its final/ model")
    p.add_argument("--config", default=None, help="a YAML or TOML config file (as for train)")
    _common(p, n=64)
    p.add_argument("--split", default="eval", choices=["train", "eval"])
    p.add_argument(
        "--temperature",
        type=_nonneg_float,
        default=None,
        help="0: greedy (default eval.temperatures[0])",
    )
    p.add_argument("--max-reflection-tokens", type=_count(1), default=None,
                   help="default sampler.max_reflection_tokens")  # fmt: skip
    p = sub.add_parser(
        "mine", help="sample K first attempts per example, keep the failures as JSONL", allow_abbrev=False
    )
    _common(p, n=50)
    p.add_argument("--tries", type=_count(1), default=4, help="K: first attempts per example")
    p.add_argument("--temperature", type=_nonneg_float, default=0.9)
