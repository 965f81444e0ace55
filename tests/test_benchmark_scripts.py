"""The benchmark and experiment scripts run end to end at tiny sizes (their figures come from real runs;
here only that each runs, writes its JSON and computes what it says)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def script(name: str, *args: str, timeout: int = 600) -> str:
    r = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def effect(first: float, second: float) -> dict:
    d = {"n": 10}
    for side, (a, b) in (("vanilla", (0.2, 0.3)), ("trained", (first, second))):
        d |= {f"{side}_first": a, f"{side}_first_ci": [a - 0.1, a + 0.1]}
        d |= {f"{side}_second": b, f"{side}_second_ci": [b - 0.1, b + 0.1]}
    d |= {"diff_first": first - 0.2, "diff_first_ci": [first - 0.3, first - 0.1]}
    d |= {"diff_second": second - 0.3, "diff_second_ci": [second - 0.4, second - 0.2]}
    d["second_given_first_failed"] = {"vanilla": {"acc": 0.125}, "trained": {"acc": 0.25}}
    return d


def test_r3_effect_table(tmp_path):
    run = tmp_path / "runs" / "x01"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"optim": {"lr": 2e-5}}))
    steps = [{"step": i, "reward_mean": 0.1 * i, "reflection_truncated_frac": 0.5} for i in range(1, 4)]
    steps[-1] |= {"eval_first_try": 0.25, "eval_second_try": 0.5}
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
    e = {"decodings": {"T=0.9": effect(0.4, 0.6)}, "wall_seconds": 600.0}
    (run / "r3_effect.json").write_text(json.dumps(e))
    stopped = tmp_path / "runs" / "x02"  # stopped before its final evaluation
    stopped.mkdir()
    (stopped / "metrics.jsonl").write_text(json.dumps(steps[0]) + "\n")
    md, out, keep = tmp_path / "t.md", tmp_path / "t.json", tmp_path / "keep"
    args = ["--md", str(md), "--json", str(out), "--keep", str(keep)]
    script("r3_effect_table.py", str(run), str(stopped), *args)
    text = md.read_text()
    assert "| x01 | T=0.9 | 10 | 3 | 10.0 | 20.0 [10.0, 30.0] |" in text
    assert "+20.0 [+10.0, +30.0] | +30.0 [+20.0, +40.0] | 12.5 → 25.0 | 0.20 | 0.50 |" in text
    assert "| x02 | — | — | 1 | — | (no final evaluation)" in text
    assert "step 3: 25.0 / 50.0" in text
    assert json.loads((keep / "x01.json").read_text()) == e
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["x01", "x02"] and rows[0]["config"] == {"optim": {"lr": 2e-5}}


def test_bench_vs_trl_smoke(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "vs_trl.json"
    script("bench_vs_trl.py", "--smoke", "--reps", "1", "--out", str(out))
    d = json.loads(out.read_text())
    assert set(d["layouts"]) == {"trl", "trl_compact", "packed", "shared_prefix"}
    for layout, row in d["layouts"].items():
        assert row["loss_rel_diff_vs_trl"] < 1e-5, (layout, row)  # same loss as TRL's own code
        assert row["real_tokens"] == d["layouts"]["trl"]["real_tokens"]
    assert d["layouts"]["packed"]["computed_tokens"] == d["layouts"]["packed"]["real_tokens"]
    assert d["layouts"]["shared_prefix"]["computed_tokens"] < d["layouts"]["packed"]["computed_tokens"]
    assert d["versions"]["trl"]


def test_bench_e2e_vs_trl_smoke(tmp_path, smol_tokenizer):
    """R3 on TRL's GRPOTrainer.train() against `r3fast train` (HF sampler), 3 steps of a tiny model on
    the parity task (a random model is right about half the time, so groups carry a signal)."""
    pytest.importorskip("trl")
    from tests.conftest import tiny_llama

    model = tmp_path / "tiny"
    tiny_llama(len(smol_tokenizer), seed=1).save_pretrained(model)
    smol_tokenizer.save_pretrained(model)
    out = tmp_path / "e2e.json"
    script("bench_e2e_vs_trl.py", "--smoke", "--model", str(model), "--task", "tests.crash_run:parity_task",
           "--steps", "3", "--sides", "trl,hf,hf-noshare", "--workdir", str(tmp_path / "w"),
           "--out", str(out))  # fmt: skip
    d = json.loads(out.read_text())
    assert set(d["rows"]) == {"trl", "hf", "hf-noshare"} and d["versions"]["trl"] and d["versions"]["torch"]
    cap = 2 * 2 * 6 + 2 * 2 * 4  # failures x G x (reflection cap + retry cap)
    for side, row in d["rows"].items():
        (steps,) = row["per_step"]
        assert len(steps) == 3, (side, steps)
        for st in steps:
            assert 0 <= st["reward"] <= 1 and 0 < st["tokens_generated"] <= cap, (side, st)
            phases = st["generation"] + st["retries"] + st["reference"] + st["learner"] + st["sync"]
            assert phases <= st["step_s"] + 1e-6, (side, st)  # the phases lie within the step
    trl, ours = d["rows"]["trl"]["per_step"][0], d["rows"]["hf"]["per_step"][0]
    assert all(t["tokens_trained"] > 0 and t["reference"] > 0 for t in trl)  # TRL trains every group, β > 0
    # r3fast drops the groups without a signal and packs shared prefixes once
    assert all(o["tokens_trained"] <= t["tokens_trained"] for o, t in zip(ours, trl))


def test_bench_memory_tiny(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "mem.json"
    script(
        "bench_memory.py",
        "--dims",
        "tiny",
        "--groups",
        "1",
        "--settings",
        "full",
        "lora",
        "lora+ckpt",
        "--out",
        str(out),
    )
    d = json.loads(out.read_text())
    rows = d["settings"]
    full, lora, ckpt = rows["full"], rows["lora"], rows["lora+ckpt"]
    assert full["reference_mb"] == pytest.approx(full["weights_mb"])  # a full copy for the KL reference
    assert lora["reference_mb"] == 0  # adapters disabled, never a copy
    assert lora["grads_mb"] < full["grads_mb"] / 5 and lora["optimizer_mb"] < full["optimizer_mb"] / 5
    assert ckpt["activations_mb"] < lora["activations_mb"]  # what checkpointing trades for recompute


def test_bench_memory_ranks_tiny(tmp_path):
    """Two gloo ranks per mode: the accounting that computes the 7B rows equals what a live rank holds
    (the script exits non-zero otherwise); FSDP2 halves weights, grads, moments and the reference."""
    out = tmp_path / "ranks.json"
    script("bench_memory_ranks.py", "--models", "tiny", "--worlds", "1", "2", "--out", str(out))
    d = json.loads(out.read_text())
    ranks = d["measured_2_ranks"]
    ddp, fsdp2 = ranks["tiny/ddp"]["measured"], ranks["tiny/fsdp2"]["measured"]
    for k in ("weights", "grads", "optimizer", "reference"):
        assert fsdp2[k] == pytest.approx(ddp[k] / 2, rel=0.02), k  # dim-0 chunks: rank 0's may round up
    assert ddp["sampler"] == 0 and fsdp2["sampler"] == ddp["weights"]  # FSDP2's HF sampler: a whole copy
    seven = [r for r in d["computed"] if r["model"] == "qwen2.5-7b" and r["setting"] == "full"]
    total = {(r["mode"], r["world"]): r["total_gib"] for r in seven}
    assert total[("ddp", 2)] == total[("ddp", 1)] > 112  # replicated: ~16 bytes a parameter on every rank
    assert total[("fsdp2", 2)] < 0.6 * total[("ddp", 2)]


def _seed_run(root: Path, seed: int, trained_right: int, n: int = 40) -> Path:
    run = root / f"seed{seed}"
    run.mkdir()
    cfg = {"trainer": {"seed": seed, "output_dir": str(run)}, "optim": {"lr": 2e-5}}
    (run / "config.json").write_text(json.dumps(cfg))
    for side, right in (("vanilla", 10), ("trained", trained_right)):
        recs = [{"example": {"i": i}, "first_ok": i < right, "second_ok": i < right + 5} for i in range(n)]
        summary = {"n": n, "first_try_correct": right, "second_try_correct": min(n, right + 5),
                   "seconds": 1.0}  # fmt: skip
        (run / f"eval_{side}_T0.9.json").write_text(json.dumps({"summary": summary, "records": recs}))
    (run / "r3_effect.json").write_text(json.dumps({"wall_seconds": 60.0, "versions": {"torch": "x"}}))
    return run


def test_r3_effect_seeds_view(tmp_path):
    runs = [_seed_run(tmp_path, s, right) for s, right in ((0, 14), (1, 18), (2, 22))]
    out, md = tmp_path / "seeds.json", tmp_path / "seeds.md"
    script("r3_effect_table.py", "--seeds", *map(str, runs), "--seeds-json", str(out), "--md", str(md))
    d = json.loads(out.read_text())
    assert d["seeds"] == [0, 1, 2] and set(d["per_seed"]) == {"0", "1", "2"}
    pooled = d["pooled"]["T=0.9"]["diff_first"]
    assert pooled["mean"] == pytest.approx((4 + 8 + 12) / 3 / 40)
    assert (pooled["min"], pooled["max"]) == (pytest.approx(0.1), pytest.approx(0.3))
    lo, hi = pooled["ci"]
    assert lo < pooled["mean"] < hi and pooled["every_seed_ci_above_0"]
    assert "pooled" in md.read_text()
    (runs[2] / "config.json").write_text(json.dumps({"trainer": {"seed": 2}, "optim": {"lr": 1e-5}}))
    argv = [sys.executable, str(BENCH / "r3_effect_table.py"), "--seeds", *map(str, runs),
            "--seeds-json", str(out), "--md", str(md)]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode != 0 and "more than trainer.seed" in r.stderr


def test_r3_effect_at_step(tmp_path, smol_tokenizer):
    """A step-N checkpoint of a longer run is evaluated as the N-step run's final model would be:
    a tiny model on the parity task (right about half the time, so its groups carry a signal and the
    weights move), trained 1 step and 2 steps with the same seed; the 2-step run's step-1 checkpoint,
    staged by r3_effect_at_step.py, gives the 1-step run's own trained evaluation record for record."""
    from tests.conftest import tiny_llama

    model = tmp_path / "tiny"
    tiny_llama(len(smol_tokenizer), seed=1).save_pretrained(model)
    smol_tokenizer.save_pretrained(model)
    flags = ["--model.name", str(model), "--model.device", "cpu", "--sampler.backend", "hf",
             "--task.name", "tests.crash_run:parity_task", "--task.options", "{}",
             "--rollout.group_size", "4", "--sampler.max_answer_tokens", "4",
             "--sampler.max_reflection_tokens", "6", "--data.failures_per_step", "2",
             "--data.mine_tries", "1",
             "--eval.n", "8", "--eval.temperatures", "[0.9, 0.0]", "--checkpoint.every", "1",
             "--metrics.progress", "false", "--optim.lr", "1e-2", "--optim.warmup_steps", "0"]  # fmt: skip
    runs = {}
    for steps in (1, 2):
        runs[steps] = tmp_path / f"run{steps}"
        r = subprocess.run([sys.executable, "-m", "r3fast", "train", *flags, "--trainer.steps", str(steps),
                            "--trainer.output_dir", str(runs[steps])], capture_output=True, text=True,
                           cwd=ROOT, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out, md = tmp_path / "at1.json", tmp_path / "at1.md"
    plot = tmp_path / "curve.png"
    script("r3_effect_at_step.py", "--step", "1", str(runs[2]), "--work", str(tmp_path / "at1"),
           "--json", str(out), "--md", str(md), "--plot", str(plot))  # fmt: skip
    assert plot.stat().st_size > 0
    for stem in ("T0.9", "greedy"):
        staged = json.loads((tmp_path / "at1" / "run2" / f"eval_trained_{stem}.json").read_text())["records"]
        own = json.loads((runs[1] / f"eval_trained_{stem}.json").read_text())["records"]
        assert staged == own, stem
    metrics = [json.loads(x) for x in (runs[2] / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["tokens"] > 0  # step 1 updated the weights: the comparison is not vanilla vs vanilla
    d = json.loads(out.read_text())
    assert d["seeds"] == [0] and d["config"]["trainer"]["steps"] == 1
    assert set(d["pooled"]) == {"T=0.9", "greedy"}
    bad = subprocess.run([sys.executable, str(BENCH / "r3_effect_at_step.py"), "--step", "3", str(runs[2]),
                          "--work", str(tmp_path / "at3"), "--json", str(out), "--md", str(md)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode != 0 and "no step 3" in bad.stderr


def test_r3_effect_curve_error_bars_at_the_edges():
    """At 0 % and 100 % right the Wilson bound equals the point only up to rounding (wilson(400, 400)
    has an upper bound of 1 - 1e-16): the bars must not be negative, which matplotlib refuses."""
    sys.path.insert(0, str(BENCH))
    from r3_effect_at_step import error_bars

    from r3fast.stats import wilson

    ys, (below, above) = error_bars([(0, 400), (400, 400), (7, 20)])
    assert ys == [0.0, 100.0, 35.0]
    assert min(below + above) >= 0.0
    lo, hi = zip(*(wilson(k, 400) for k in (0, 400)))
    assert below[1] == pytest.approx(100 - 100 * lo[1]) and above[0] == pytest.approx(100 * hi[0])
    lo7, hi7 = wilson(7, 20)
    assert below[2] == pytest.approx(35 - 100 * lo7) and above[2] == pytest.approx(100 * hi7 - 35)


def test_report_curve_bars_at_100_percent():
    """The run report's held-out curve shares the clamp: a point with all 400 problems right."""
    from r3fast.report import interval_bars
    from r3fast.stats import wilson

    lo, hi = wilson(400, 400)
    assert hi < 1.0  # the rounding that made the bar negative
    assert interval_bars([1.0], [lo], [hi]) == [[pytest.approx(1.0 - lo)], [0.0]]
