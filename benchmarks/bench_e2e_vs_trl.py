"""The whole R3 step: r3fast against R3 written on TRL's public GRPOTrainer, on one failure set.

Both sides train on the same offline failure set (mined once with `r3fast mine` and cached), the
same failures at each step, with the main job's settings (`--preset countdown-demo`: G reflections
per failure, caps, temperature, dapo, β, lr, warm-up, grad clip, fp32), in one process per run,
runs alternated, the same threads.

    trl      R3 as a TRL 1.16 user writes it: a dataset whose conversational prompt is task + failed
             attempt + reflection request (r3fast's own prompt text, so both see the same tokens),
             `num_generations = G`, one step = failures_per_step prompts, `shuffle_dataset=False`
             over the failures in r3fast's order; the reward function generates the retry with the
             trainer's current model (`model.generate`, one batch, left-padded) and returns 1/0
             from the task's verifier. `GRPOTrainer.train()` does everything else.
    hf       `r3fast train` with the HF sampler (the generation backend TRL uses here)
    vllm     `r3fast train` with the colocated vLLM sampler
    hf-noshare  hf with `sampler.share_prefix false`: every row prefilled in full, as before the
             HF sampler shared prompt prefixes (the before/after of that change; not by default)

What differs, read from TRL's installed code (trl/trainer/grpo_trainer.py):
- Groups whose rewards are all equal: TRL keeps them (advantage 0, so only the β-KL term moves
  them) and runs their forward and backward; r3fast drops them before the learner.
- TRL pads every sequence of the step to the longest prompt + longest completion and scores the
  whole batch; r3fast packs the groups' shared prefixes once (data.shared_prefix).
- The warm-up: HF's constant_with_warmup gives step 1 lr 0 (step / warmup), r3fast lr / warmup; TRL's
  KL has no bias correction here (`use_bias_correction_kl=False`, as r3fast).
- TRL's retries run inside its reward function, after its reference pass; r3fast's rollout ends
  before its learner starts. Neither side mines during the step (the failure set is offline).

Per step: wall seconds (TRL: on_step_begin -> on_step_end; r3fast: step_s), the phases (generation
of the reflections, retries + verification, reference log-probs, the rest of the learner, weight
sync), tokens generated (reflections + retries) and trained (real tokens through the learner),
mean reward. Seconds per step: median over steps 2..N (step 1 carries lazy initialisation). Peak
RSS: the run's process (wait4).

    python benchmarks/bench_e2e_vs_trl.py --steps 6 --reps 1          # CPU, the main job's model
    python benchmarks/bench_e2e_vs_trl.py --smoke                      # seconds: the script works

Prints a table; writes benchmarks/results/e2e_vs_trl_<device>_<date>.json (device, versions of
both sides, every figure).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIDES = ("trl", "hf", "vllm", "hf-noshare")
DEFAULT_SIDES = ("trl", "hf", "vllm")
R3FAST_SIDES = {  # side -> `r3fast train` overrides
    "hf": ["--sampler.backend", "hf"],
    "vllm": ["--sampler.backend", "vllm"],
    "hf-noshare": ["--sampler.backend", "hf", "--sampler.share_prefix", "false"],
}
PHASE_COLUMNS = ("generation", "retries", "reference", "learner", "sync")


# ---------------------------------------------------------------- the shared job


def job_overrides(args) -> list[str]:
    """The main job (`--preset countdown-demo`) with this benchmark's failure set and steps, no
    evaluation and no checkpoint inside the run; --smoke: small groups and caps for a tiny model."""
    over = [
        "--data.online",
        "false",
        "--data.failures",
        str(args.failures),
        "--trainer.steps",
        str(args.steps),
        "--trainer.seed",
        str(args.seed),
        "--eval.n",
        "0",
        "--eval.every",
        "0",
        "--checkpoint.every",
        "0",
        "--metrics.progress",
        "false",
        "--model.device",
        args.device,
    ]
    if args.model:
        over += ["--model.name", args.model]
    if args.task:  # another task (its default options), e.g. one a random model can solve sometimes
        over += ["--task.name", args.task, "--task.options", "{}"]
    if args.smoke:
        over += [
            "--rollout.group_size",
            "2",
            "--data.failures_per_step",
            "2",
            "--sampler.max_reflection_tokens",
            "6",
            "--sampler.max_answer_tokens",
            "4",
            "--data.max_tokens",
            "512",
            "--sampler.max_model_len",
            "512",
        ]
    return over


def job_config(args):
    from r3fast.config import apply_overrides
    from r3fast.presets import get

    return apply_overrides(get("countdown-demo"), job_overrides(args))


def ensure_failures(args) -> Path:
    """The offline failure set both sides train on: mined once by `r3fast mine` (vanilla model, the
    job's task and caps), enough for every step, reused while it exists."""
    path = Path(args.failures)
    if path.is_file() and path.stat().st_size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = job_config(args)
    need = cfg.data.failures_per_step * args.steps
    cmd = [
        sys.executable,
        "-m",
        "r3fast",
        "mine",
        "--task",
        cfg.task.name,
        "--task-options",
        json.dumps(cfg.task.options),
        "--model",
        cfg.model.name,
        "--n",
        str(4 * need),
        "--tries",
        "1",
        "--seed",
        str(args.seed),
        "--sampler",
        "hf",
        "--device",
        "cpu",
        "--max-answer-tokens",
        str(cfg.sampler.max_answer_tokens),
        "--temperature",
        str(cfg.sampler.temperature),
        "--out",
        str(path),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, env=child_env(args), stdout=subprocess.DEVNULL)
    n = sum(1 for _ in path.open())
    if n < need:
        path.unlink()
        sys.exit(f"mined {n} failures, the benchmark needs {need}: raise --steps' failure budget (--n)")
    return path


def step_failures(cfg, task) -> list:
    """The failures of every step in r3fast's own order (FailureSource, trainer.seed)."""
    from r3fast.failures import FailureSource

    src = FailureSource.from_config(cfg, task)
    k = cfg.data.failures_per_step
    return [
        f for _ in range(cfg.trainer.steps) for f in src.next(k, sampler=None, tokenizer=None, params=None)
    ]


# ---------------------------------------------------------------- TRL (in its own process)


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r3fast.models import resolve_model_path
    from r3fast.prompts import reflect_messages, retry_messages
    from r3fast.validate import build_configured_task

    torch.set_num_threads(args.threads)
    cfg = job_config(args)
    if ":" in cfg.task.name:  # pkg.module:factory from the checkout, as `python -m r3fast` finds it
        sys.path.append(str(ROOT))
    task = build_configured_task(cfg.task)
    fails = step_failures(cfg, task)
    path = resolve_model_path(cfg.model.name)
    tok = AutoTokenizer.from_pretrained(path)
    rp, s, G = cfg.task.reflect_prompt, cfg.sampler, cfg.rollout.group_size
    prompts = [reflect_messages(task.build_prompt(f.example), f.attempt, rp) for f in fails]
    data = Dataset.from_dict({"prompt": prompts, "idx": list(range(len(fails)))})
    steps: list[dict] = []
    cur: dict = {}

    def add(key: str, v: float) -> None:
        cur[key] = cur.get(key, 0.0) + v

    def retry_reward(prompts, completions, idx, **kw) -> list[float]:
        """The retry after each reflection, with the trainer's current model, verified: 1 or 0."""
        t0 = time.perf_counter()
        model = trainer.accelerator.unwrap_model(trainer.model)
        msgs = [
            retry_messages(task.build_prompt(fails[i].example), fails[i].attempt, c[0]["content"], rp)
            for i, c in zip(idx, completions)
        ]
        tok.padding_side = "left"
        enc = tok.apply_chat_template(
            msgs, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=s.temperature,
                top_p=s.top_p,
                max_new_tokens=s.max_answer_tokens,
                pad_token_id=tok.pad_token_id,
            )
        model.train(was_training)
        new = out[:, enc["input_ids"].shape[1] :]
        answers = tok.batch_decode(new, skip_special_tokens=True)
        done = (new == tok.eos_token_id).cumsum(1) == 0  # tokens up to the first eos (pad = eos here)
        add("retry_tokens", float(done.sum()) + float((~done).any(1).sum()))
        rewards = [1.0 if task.verify(fails[i].example, a) else 0.0 for i, a in zip(idx, answers)]
        add("retries_s", time.perf_counter() - t0)
        add("reward_sum", sum(rewards))
        add("rewards", len(rewards))
        return rewards

    targs = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        loss_type=cfg.loss.loss_type,
        beta=cfg.loss.beta,
        num_generations=G,
        per_device_train_batch_size=G * cfg.data.failures_per_step,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=s.max_reflection_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        scale_rewards=cfg.rollout.scale_rewards,
        mask_truncated_completions=cfg.rollout.mask_truncated_completions,
        use_bias_correction_kl=False,
        learning_rate=cfg.optim.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.optim.warmup_steps,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.learner.grad_clip,
        max_steps=cfg.trainer.steps,
        shuffle_dataset=False,
        remove_unused_columns=False,
        seed=args.seed,
        use_cpu=args.device == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": cfg.model.dtype},
    )
    trainer = GRPOTrainer(
        model=path, reward_funcs=retry_reward, args=targs, train_dataset=data, processing_class=tok
    )

    gen = trainer._generate

    def timed_generate(prompts):  # the reflections (TRL's own generation)
        t0 = time.perf_counter()
        out = gen(prompts)
        add("generation_s", time.perf_counter() - t0)
        add("reflection_tokens", float(sum(map(len, out[1]))))
        return out

    logps = trainer._get_per_token_logps_and_entropies

    def timed_logps(model, *a, **k):  # bill the reference pass; the policy's runs in the loss
        t0 = time.perf_counter()
        out = logps(model, *a, **k)
        if model is trainer.ref_model:
            add("reference_s", time.perf_counter() - t0)
        return out

    loss = trainer._compute_loss

    def counted_loss(model, inputs):
        add("trained_tokens", float(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum()))
        return loss(model, inputs)

    trainer._generate, trainer._get_per_token_logps_and_entropies = timed_generate, timed_logps
    trainer._compute_loss = counted_loss

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            cur.clear()
            cur["t0"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            cur["step_s"] = time.perf_counter() - cur.pop("t0")
            steps.append(dict(cur))

    trainer.add_callback(Clock())
    trainer.train()
    out = []
    for m in steps:
        inside = m.get("generation_s", 0) + m.get("retries_s", 0) + m.get("reference_s", 0)
        out.append(
            {
                "step_s": m["step_s"],
                "generation": m.get("generation_s", 0.0),
                "retries": m.get("retries_s", 0.0),
                "reference": m.get("reference_s", 0.0),
                "learner": m["step_s"] - inside,
                "sync": 0.0,
                "tokens_generated": int(m.get("reflection_tokens", 0) + m.get("retry_tokens", 0)),
                "tokens_trained": int(m.get("trained_tokens", 0)),
                "reward": m["reward_sum"] / max(m["rewards"], 1),
            }
        )
    return {"steps": out}


# ---------------------------------------------------------------- r3fast (its CLI, its own process)


def r3fast_cmd(args, side: str) -> list[str]:
    run = Path(args.workdir) / f"r3fast-{side}"
    return [
        sys.executable,
        "-m",
        "r3fast",
        "train",
        "--preset",
        "countdown-demo",
        *job_overrides(args),
        *R3FAST_SIDES[side],
        "--trainer.output_dir",
        str(run),
        "--overwrite",
    ]


def read_r3fast(args, side: str) -> dict:
    run = Path(args.workdir) / f"r3fast-{side}"
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        ph = {k[6:-2]: v for k, v in m.items() if k.startswith("phase_") and k.endswith("_s")}
        learner = sum(ph.get(k, 0.0) for k in ("pack", "old_logprobs", "forward_backward", "optimizer"))
        out.append(
            {
                "step_s": m["step_s"],
                "generation": ph.get("reflect", 0.0),
                "retries": ph.get("retry", 0.0) + ph.get("verify", 0.0),
                "reference": ph.get("reference", 0.0),
                "learner": learner,
                "sync": ph.get("sync", 0.0),
                "tokens_generated": m["phase_reflect_tokens"] + m["phase_retry_tokens"],
                "tokens_trained": m["tokens"],
                "reward": m["reward_mean"],
            }
        )
    return {"steps": out}


# ---------------------------------------------------------------- driver


def child_env(args) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_side(args, side: str) -> dict:
    """One run in a fresh process; its result and peak RSS (wait4 on that process)."""
    if side == "trl":
        cmd = [sys.executable, __file__, *passthrough(args), "--worker", "trl"]
    else:
        cmd = r3fast_cmd(args, side)
    log = Path(args.workdir) / f"{side}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(args), stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{side} failed (exit {proc.returncode}); its log, {log}:\n{log.read_text()[-3000:]}")
    res = (
        json.loads((Path(args.workdir) / "trl.json").read_text())
        if side == "trl"
        else read_r3fast(args, side)
    )
    return {**res, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def passthrough(args) -> list[str]:
    out = [
        "--steps",
        str(args.steps),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--failures",
        str(args.failures),
        "--workdir",
        str(args.workdir),
        "--device",
        args.device,
    ]
    out += ["--model", args.model] if args.model else []
    out += ["--task", args.task] if args.task else []
    return out + (["--smoke"] if args.smoke else [])


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    rows = {}
    for side, reps in runs.items():
        later = [st for r in reps for st in r["steps"][1:]] or [st for r in reps for st in r["steps"]]
        med = {k: statistics.median(st[k] for st in later) for k in ("step_s", *PHASE_COLUMNS)}
        rows[side] = {
            "median_step_s": med["step_s"],
            **{f"{k}_s": med[k] for k in PHASE_COLUMNS},
            "tokens_generated_per_step": statistics.median(st["tokens_generated"] for st in later),
            "tokens_trained_per_step": statistics.median(st["tokens_trained"] for st in later),
            "reward_mean": statistics.fmean(st["reward"] for r in reps for st in r["steps"]),
            "rewards_per_step": [[st["reward"] for st in r["steps"]] for r in reps],
            "peak_rss_gb": max(r["peak_rss_gb"] for r in reps),
            "per_step": [r["steps"] for r in reps],
        }
    if "trl" in rows:
        for r in rows.values():
            r["speedup_vs_trl"] = rows["trl"]["median_step_s"] / r["median_step_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"comma-separated: {', '.join(SIDES)}")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=1, help="runs per side, alternated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="default: the preset's (SmolLM2-135M-Instruct)")
    ap.add_argument("--task", default=None, help="default: the preset's (easiest Countdown)")
    ap.add_argument("--failures", default=None, help="the offline failure set (default: mined once, cached)")
    ap.add_argument("--workdir", default=str(ROOT / ".cache" / "bench" / "e2e"))
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/e2e_vs_trl_...)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model given by --model: the script works")
    ap.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke and not args.model:
        ap.error("--smoke needs --model (a tiny save_pretrained directory)")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.failures is None:
        tag = "smoke" if args.smoke else f"seed{args.seed}_steps{args.steps}"
        args.failures = str(Path(args.workdir) / f"failures_{tag}.jsonl")
    if args.worker == "trl":
        (Path(args.workdir) / "trl.json").write_text(json.dumps(run_trl(args)))
        return
    sides = [s for s in args.sides.split(",") if s]
    if bad := [s for s in sides if s not in SIDES]:
        ap.error(f"unknown side(s) {bad}; choose from {', '.join(SIDES)}")
    ensure_failures(args)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for rep in range(args.reps):  # alternate sides, so drift hits all alike
        for side in sides:
            res = run_side(args, side)
            runs[side].append(res)
            secs = [round(st["step_s"], 1) for st in res["steps"]]
            print(f"rep {rep} {side:<10} s/step {secs}  peak RSS {res['peak_rss_gb']:.1f} GB", flush=True)
    rows = summarise(runs)
    print(
        f"\n{'side':<10} {'s/step':>7} "
        + " ".join(f"{c:>10}" for c in PHASE_COLUMNS)
        + f" {'gen tok':>8} {'trained':>8} {'reward':>7} {'RSS GB':>7} {'vs trl':>7}"
    )
    for side, r in rows.items():
        sp = f"{r['speedup_vs_trl']:.2f}x" if "speedup_vs_trl" in r else "-"
        print(
            f"{side:<10} {r['median_step_s']:>7.1f} "
            + " ".join(f"{r[c + '_s']:>10.1f}" for c in PHASE_COLUMNS)
            + f" {r['tokens_generated_per_step']:>8.0f} {r['tokens_trained_per_step']:>8.0f}"
            f" {r['reward_mean']:>7.3f} {r['peak_rss_gb']:>7.1f} {sp:>7}"
        )
    name = f"e2e_vs_trl_{args.device}_{dt.date.today():%Y%m%d}{'_smoke' if args.smoke else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    from r3fast.env_report import cpu_info, package_versions

    cpu = "cpu: {cpu} ({cores} cores)".format(**cpu_info())
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": cpu if args.device == "cpu" else args.device,
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "versions": package_versions(),
        "config": job_config(args).to_dict(),
        "rows": rows,
        "notes": "trl: R3 on TRL's own GRPOTrainer.train() (reward function = the retry); hf / vllm: "
        "`r3fast train`. Seconds: median over steps 2..N of every rep; phases as the docstring says. "
        "Peak RSS per process (wait4), interpreter and libraries included.",
    }
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    import importlib.util

    if importlib.util.find_spec("r3fast") is None:  # a checkout without an install; never in front of one
        sys.path.append(str(ROOT))
    main()
