"""Every R3-effect experiment in one table: docs/experiments.md and benchmarks/results/r3_experiments.json.

Reads each run directory given (its config.json, metrics.jsonl, r3_effect.json), copies the run's
r3_effect.json to benchmarks/results/r3_runs/<name>.json (the committed record behind each row), and
writes one row per run and decoding: steps, wall time, the four columns with 95 % Wilson intervals,
the differences with paired-bootstrap intervals, retry success given a 1st-try failure, and the
training signals (reward, groups with signal, reflection truncation). A run without r3_effect.json
(stopped early) gets a row with what its metrics show. Notes come from benchmarks/r3_effect/<name>.yaml's
first comment lines.

    python benchmarks/r3_effect_table.py runs/exp/*
    python benchmarks/r3_effect_table.py --seeds runs/seed0 runs/seed1 runs/seed2   # one recipe, k seeds

The seeds view reads each run's saved evaluations (eval_{vanilla,trained}_<decoding>.json, every
problem's record), checks that the runs differ only in trainer.seed and were measured on the same
problems, and writes benchmarks/results/r3_effect_seeds_<date>.json and docs/r3_effect_seeds.md:
every seed's four columns and Δs with their intervals, the Δs' mean and range over seeds, and a
pooled Δ whose interval resamples both the seeds and the problems (r3fast.stats.seeds_bootstrap).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from r3fast.effect import effect
from r3fast.evaluate import EvalResult
from r3fast.stats import seeds_bootstrap

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "results" / "r3_runs"
CONFIGS = ROOT / "benchmarks" / "r3_effect"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(e: dict, k: str) -> str:
    lo, hi = e[k + "_ci"]
    return f"{pct(e[k])} [{pct(lo)}, {pct(hi)}]"


def diff(e: dict, k: str) -> str:
    lo, hi = e[k + "_ci"]
    return f"{100 * e[k]:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def note(name: str) -> str:
    paths = sorted(CONFIGS.glob(f"{name}.yaml")) + sorted(CONFIGS.glob(f"{name}_*.yaml"))
    if not paths:
        return ""
    path = paths[0]
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def summarise(run: Path, keep: Path = RUNS) -> dict:
    name = run.name
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] if (
        run / "metrics.jsonl").is_file() else []  # fmt: skip
    effect = json.loads((run / "r3_effect.json").read_text()) if (run / "r3_effect.json").is_file() else None
    if effect is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "r3_effect.json", keep / f"{name}.json")
    last = metrics[-5:]
    mean = lambda k: sum(m.get(k) or 0 for m in last) / max(len(last), 1)  # noqa: E731
    curve = [(m["step"], m["eval_first_try"], m["eval_second_try"]) for m in metrics if "eval_first_try" in m]
    return {
        "name": name,
        "note": note(name),
        "steps": len(metrics),
        "wall_min": effect["wall_seconds"] / 60 if effect else None,
        "step_s": sum(m.get("step_s", 0) for m in metrics) / max(len(metrics), 1),
        "train_reward_last5": mean("reward_mean"),
        "train_signal_last5": mean("frac_groups_with_signal"),
        "train_truncated_last5": mean("reflection_truncated_frac"),
        "reflection_len_last5": mean("reflection_len_mean"),
        "eval_curve": curve,
        "effect": effect,
        "config": cfg,
    }


def table(rows: list[dict]) -> str:
    out = [
        "| run | decoding | n | steps | wall (min) | vanilla 1st | vanilla 2nd | trained 1st | trained 2nd "
        "| Δ 1st | Δ 2nd | 2nd given 1st failed | reward (last 5 steps) | truncated |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e = r["effect"]
        if e is None:
            out.append(f"| {r['name']} | — | — | {r['steps']} | — | (no final evaluation) | | | | | | | "
                       f"{r['train_reward_last5']:.2f} | {r['train_truncated_last5']:.2f} |")  # fmt: skip
            continue
        for label, d in e["decodings"].items():
            g = d["second_given_first_failed"]
            given = f"{pct(g['vanilla']['acc'])} → {pct(g['trained']['acc'])}"
            out.append(
                f"| {r['name']} | {label} | {d['n']} | {r['steps']} | {r['wall_min']:.1f} | "
                + " | ".join(
                    ci(d, k) for k in ("vanilla_first", "vanilla_second", "trained_first", "trained_second")
                )
                + f" | {diff(d, 'diff_first')} | {diff(d, 'diff_second')} | {given} | "
                f"{r['train_reward_last5']:.2f} | {r['train_truncated_last5']:.2f} |"
            )
    return "\n".join(out)


def _without_seed(cfg: dict) -> dict:
    out = json.loads(json.dumps(cfg))
    out.get("trainer", {}).pop("seed", None)
    out.get("trainer", {}).pop("output_dir", None)
    return out


def seeds_view(runs: list[Path]) -> dict:
    """Per seed and pooled: the R3 effect of one recipe run with several trainer.seed values."""
    cfgs = [json.loads((r / "config.json").read_text()) for r in runs]
    if any(_without_seed(c) != _without_seed(cfgs[0]) for c in cfgs):
        sys.exit("the runs differ in more than trainer.seed (and output_dir): not one recipe")
    seeds = [c["trainer"]["seed"] for c in cfgs]
    per_seed, pooled = {}, {}
    stems = [p.stem.removeprefix("eval_vanilla_") for p in sorted(runs[0].glob("eval_vanilla_*.json"))]
    stems.sort(key=lambda x: x == "greedy")  # sampled first, as the README's table
    labels = [x if x == "greedy" else "T=" + x.removeprefix("T") for x in stems]  # files drop the "="
    for stem, label in zip(stems, labels):
        flags: dict[str, list[list[float]]] = {"diff_first": [], "diff_second": []}
        problems = None
        for run, seed in zip(runs, seeds):
            v, t = (EvalResult.from_json(json.loads((run / f"eval_{side}_{stem}.json").read_text()))
                    for side in ("vanilla", "trained"))  # fmt: skip
            keys = [json.dumps(r["example"], sort_keys=True) for r in v.records]
            if problems is not None and keys != problems:
                sys.exit(f"{run}: measured on other problems than {runs[0]} (set eval.problems_seed alike)")
            problems = keys
            per_seed.setdefault(str(seed), {})[label] = effect(v, t)
            for name, idx in (("diff_first", "first_ok"), ("diff_second", None)):
                def ok(r: dict, idx=idx) -> float:
                    return float(r["first_ok"] if idx else (r["first_ok"] or r.get("second_ok", False)))

                flags[name].append([ok(b) - ok(a) for a, b in zip(v.records, t.records, strict=True)])
        pooled[label] = {}
        for name, diffs in flags.items():
            mean, lo, hi = seeds_bootstrap(diffs)
            each = [per_seed[str(s)][label][name] for s in seeds]
            pooled[label][name] = {"mean": mean, "ci": [lo, hi], "min": min(each), "max": max(each),
                                   "every_seed_ci_above_0": all(per_seed[str(s)][label][name + "_ci"][0] > 0
                                                                for s in seeds)}  # fmt: skip
    wall = {}
    for run, seed in zip(runs, seeds):
        e = json.loads((run / "r3_effect.json").read_text())
        wall[str(seed)] = e["wall_seconds"]
        versions = e["versions"]
    return {"seeds": seeds, "n": per_seed[str(seeds[0])][labels[0]]["n"], "per_seed": per_seed,
            "pooled": pooled, "train_command_seconds": wall, "config": _without_seed(cfgs[0]),
            "versions": versions}  # fmt: skip


def seeds_table(view: dict) -> str:
    out = ["| decoding | seed | vanilla 1st | vanilla 2nd | trained 1st | trained 2nd | Δ 1st | Δ 2nd |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label in view["pooled"]:
        for seed in view["seeds"]:
            d = view["per_seed"][str(seed)][label]
            cols = [ci(d, k) for k in ("vanilla_first", "vanilla_second", "trained_first", "trained_second")]
            out.append(f"| {label} | {seed} | " + " | ".join(cols) + f" | {diff(d, 'diff_first')} | "
                       f"{diff(d, 'diff_second')} |")  # fmt: skip
        p = view["pooled"][label]
        cells = []
        for k in ("diff_first", "diff_second"):
            q = p[k]
            cells.append(f"**{100 * q['mean']:+.1f}** [{100 * q['ci'][0]:+.1f}, {100 * q['ci'][1]:+.1f}] "
                         f"(range {100 * q['min']:+.1f} … {100 * q['max']:+.1f})")  # fmt: skip
        out.append(f"| {label} | pooled | | | | | " + " | ".join(cells) + " |")
    return "\n".join(out)


def seeds_main(runs: list[Path], md: Path, out: Path) -> None:
    import datetime as dt

    view = seeds_view(runs)
    view["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    from r3fast.env_report import cpu_info

    view["device"] = cpu_info()
    out.write_text(json.dumps(view, indent=1))
    text = seeds_table(view)
    md.write_text(text + "\n\nAccuracy in %, 95 % Wilson intervals; Δ in points, 95 % paired bootstrap over "
                  "the problems per seed; pooled: the mean over seeds, its interval from resampling seeds "
                  "and problems together, and the range of the seeds' Δs.\n")  # fmt: skip
    print(text)
    print(f"wrote {out} and {md}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--seeds", action="store_true", help="the runs are one recipe over several trainer.seed")
    p.add_argument("--seeds-json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "experiments_table.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "r3_experiments.json")
    p.add_argument("--keep", type=Path, default=RUNS, help="where each run's r3_effect.json is copied")
    a = p.parse_args()
    if a.seeds:
        import datetime as dt

        date = dt.date.today().strftime("%Y%m%d")
        out = a.seeds_json or ROOT / "benchmarks" / "results" / f"r3_effect_seeds_{date}.json"
        md = a.md if a.md != ROOT / "docs" / "experiments_table.md" else ROOT / "docs" / "r3_effect_seeds.md"
        return seeds_main(a.runs, md, out)
    rows = [summarise(r, a.keep) for r in sorted(a.runs) if r.is_dir()]
    if not rows:
        sys.exit("no run directories given")
    text = table(rows)
    notes = "\n".join(f"- **{r['name']}**: {r['note']}" for r in rows if r["note"])
    curves = "\n".join(
        f"- **{r['name']}**: " + ", ".join(f"step {s}: {pct(a)} / {pct(b)}" for s, a, b in r["eval_curve"])
        for r in rows if r["eval_curve"]
    )  # fmt: skip
    a.md.parent.mkdir(parents=True, exist_ok=True)
    a.md.write_text(
        f"{text}\n\nRuns:\n\n{notes}\n\nHeld-out curve (1st / 2nd try, eval.every):\n\n{curves}\n"
    )
    a.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "config"} | {"config": r["config"]}
                                  for r in rows], indent=1))  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
