"""The R3 effect of a recipe stopped earlier, from the checkpoints its seed runs already saved.

A run with a constant lr after warm-up saves at step N exactly the model an N-step run would end
with (the steps' draws follow trainer.seed and the step, not trainer.steps), so "fewer steps" is
measured without training again: each run's `checkpoints/step_<N>` is evaluated by `r3fast eval`
(the trainer's own protocol: same problems, seed streams, chunks, caps), at every decoding the run
evaluated, against the run's own vanilla evaluations. Each seed gets a directory shaped like a run
(config.json with trainer.steps = N, eval_{vanilla,trained}_<decoding>.json), and the seeds view of
r3_effect_table.py reads them. `--plot` draws the held-out curve every seed gives at full size:
step 0 (the vanilla model), step N and the run's last step, each point the accuracy on all the
held-out problems with its 95 % Wilson interval (the runs' periodic curve uses a small set).

    python benchmarks/r3_effect_at_step.py --step 8 runs/seed0 runs/seed1 runs/seed2 --work runs/at8 \\
        --json benchmarks/results/r3_effect_seeds_step8_<date>.json --md docs/r3_effect_seeds_step8.md \\
        --plot docs/r3_effect_curve_seeds.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from r3_effect_table import seeds_main  # noqa: E402

from r3fast.evaluate import EvalResult, decoding_label  # noqa: E402
from r3fast.report import interval_bars  # noqa: E402
from r3fast.stats import wilson  # noqa: E402


def stage(run: Path, step: int, work: Path) -> Path:
    """`work/<run name>`: the run's config at `step` steps, its vanilla evaluations, and the
    checkpoint's trained evaluations (made here unless already there)."""
    cfg = json.loads((run / "config.json").read_text())
    if cfg["optim"]["schedule"] != "constant":
        sys.exit(f"{run}: lr schedule {cfg['optim']['schedule']!r} depends on trainer.steps; "
                 "its step-N checkpoint is not an N-step run")  # fmt: skip
    if not 0 < step <= cfg["trainer"]["steps"]:
        sys.exit(f"{run}: ran {cfg['trainer']['steps']} steps, no step {step}")
    ckpt = run / "checkpoints" / f"step_{step:08d}"
    if not (ckpt / "model.safetensors").is_file():
        sys.exit(f"{run}: no checkpoint {ckpt} (checkpoint.every = {cfg['checkpoint']['every']})")
    out = work / run.name
    out.mkdir(parents=True, exist_ok=True)
    cfg["trainer"]["steps"] = step
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    record = out / "r3_effect.json"
    # evaluations already made are reused, and so is what they took
    seconds = json.loads(record.read_text())["eval_seconds"] if record.is_file() else {}
    for t in cfg["eval"]["temperatures"]:
        stem = decoding_label(t).replace("=", "")
        shutil.copy(run / f"eval_vanilla_{stem}.json", out / f"eval_vanilla_{stem}.json")
        target = out / f"eval_trained_{stem}.json"
        if not target.is_file():
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "r3fast", "eval", "--run", str(run), "--model", str(ckpt),
                   "--temperature", str(t), "--out", str(target)]  # fmt: skip
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            seconds[stem] = time.perf_counter() - t0
    versions = json.loads((run / "r3_effect.json").read_text())["versions"]
    record.write_text(json.dumps({
        "wall_seconds": None, "eval_seconds": seconds, "versions": versions,
        "from": {"run": str(run), "checkpoint": ckpt.name}}, indent=1))  # fmt: skip
    return out


def _load(path: Path) -> EvalResult:
    return EvalResult.from_json(json.loads(path.read_text()))


def error_bars(right: list[tuple[int, int]]) -> tuple[list[float], list[list[float]]]:
    """Percent right and matplotlib's (below, above) 95 % Wilson bar lengths for (k, n) pairs."""
    ys = [100 * k / n for k, n in right]
    lo, hi = zip(*(wilson(k, n) for k, n in right))
    return ys, interval_bars(ys, [100 * x for x in lo], [100 * x for x in hi])


def plot_curve(runs: list[Path], staged: list[Path], step: int, path: Path) -> None:
    """One panel per decoding, 1st and 2nd try against the step, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    temps = json.loads((runs[0] / "config.json").read_text())["eval"]["temperatures"]
    stems = [decoding_label(t).replace("=", "") for t in temps]
    fig, axes = plt.subplots(1, len(stems), figsize=(5.5 * len(stems), 4), squeeze=False)
    for ax, stem, t in zip(axes[0], stems, temps):
        for k, (run, at) in enumerate(zip(runs, staged)):
            cfg = json.loads((run / "config.json").read_text())
            points = [
                (0, _load(run / f"eval_vanilla_{stem}.json")),
                (step, _load(at / f"eval_trained_{stem}.json")),
                (cfg["trainer"]["steps"], _load(run / f"eval_trained_{stem}.json")),
            ]
            for which, style, face in (("first", "--", "white"), ("second", "-", f"C{k}")):
                xs = [x + 0.15 * (k - 1) for x, _ in points]  # seeds side by side, so the bars do not hide
                right = [(getattr(r, f"{which}_correct"), r.n) for _, r in points]
                ys, err = error_bars(right)
                label = f"seed {cfg['trainer']['seed']}, {'1st' if which == 'first' else '2nd'} try"
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    fmt=style + "o",
                    color=f"C{k}",
                    mfc=face,
                    capsize=3,
                    markersize=5,
                    label=label,
                )
        ax.set_title(f"held-out accuracy, {decoding_label(t)} (n = {right[0][1]} each, 95 % Wilson)")
        ax.set_xlabel("training step")
        ax.set_ylabel("% right")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories of one recipe, one per trainer.seed")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--work", type=Path, required=True, help="where the per-seed directories are staged")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None, help="PNG of the full-size curve: step 0, N, last")
    a = p.parse_args()
    staged = [stage(r, a.step, a.work) for r in a.runs]
    seeds_main(staged, a.md, a.json)
    if a.plot:
        plot_curve(a.runs, staged, a.step, a.plot)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
