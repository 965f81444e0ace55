"""Every R3-effect experiment in one table: docs/experiments.md and benchmarks/results/r3_experiments.json.

Reads each run directory given (its config.json, metrics.jsonl, r3_effect.json), copies the run's
r3_effect.json to benchmarks/results/r3_runs/<name>.json (the committed record behind each row), and
writes one row per run and decoding: steps, wall time, the four columns with 95 % Wilson intervals,
the differences with paired-bootstrap intervals, retry success given a 1st-try failure, and the
training signals (reward, groups with signal, reflection truncation). A run without r3_effect.json
(stopped early) gets a row with what its metrics show. Notes come from benchmarks/r3_effect/<name>.yaml's
first comment lines.

    python benchmarks/r3_effect_table.py runs/exp/*
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "experiments_table.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "r3_experiments.json")
    p.add_argument("--keep", type=Path, default=RUNS, help="where each run's r3_effect.json is copied")
    a = p.parse_args()
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
