"""End-of-run artefacts: PNG plots of the training curves and `report.md` with the paper's
four columns (vanilla 1st / 2nd try, trained 1st / 2nd try) and their intervals."""

from __future__ import annotations

from pathlib import Path

from .effect import effect_table
from .metric_schema import METRICS, PHASES
from .stats import wilson

__all__ = ["interval_bars", "plot_metrics", "write_report"]

PLOTS = {
    "reward.png": ("reward_mean", "reward (retry success after a reflection)"),
    "retry_success.png": ("retry_success", "retries right after a reflection (fraction)"),
    "groups_with_signal.png": ("frac_groups_with_signal", "fraction of groups with a reward signal"),
    "reflection_length.png": ("reflection_len_mean", "reflection length (tokens)"),
    "eval.png": (("eval_first_try", "eval_second_try"), "held-out accuracy (eval.every)"),
}


# One figure, panels side by side: the held-out curve next to what training saw.
CURVES = (
    (("eval_first_try", "eval_second_try"), "held-out accuracy, 95 % intervals (0: vanilla)"),
    (("reward_mean", "frac_groups_with_signal"), "training: retry success, groups with signal"),
    (("reflection_truncated_frac",), "reflections cut at the length cap"),
)


def _series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    # Numbers only: a diverged step logs null (metrics.jsonl is strict JSON).
    return [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]


def _held_out(metrics: list[dict], effects: dict[str, dict] | None, every_n: int | None) -> dict:
    """The held-out curve, 1st and 2nd try: (step, accuracy, lo, hi) points. Step 0 is the vanilla
    model and the last step the trained one, both from the final report's evaluations (eval.n
    problems); the periodic points (eval.every, eval.every_n problems) sit between, each with its
    95 % Wilson interval."""
    head = next(iter(effects.values())) if effects else None
    last = max((m["step"] for m in metrics), default=0)
    out = {}
    for key, side in (("eval_first_try", "first"), ("eval_second_try", "second")):
        pts = []
        if head is not None:
            pts.append((0, head[f"vanilla_{side}"], *head[f"vanilla_{side}_ci"]))
        for step, acc in _series(metrics, key):
            if head is None or step != last:
                lo, hi = wilson(round(acc * every_n), every_n) if every_n else (acc, acc)
                pts.append((step, acc, lo, hi))
        if head is not None:
            pts.append((last, head[f"trained_{side}"], *head[f"trained_{side}_ci"]))
        out[key] = pts
    return out


def interval_bars(acc, lo, hi) -> list[list[float]]:
    """matplotlib's (below, above) bar lengths for points `acc` with intervals [lo, hi]. Clamped at
    0: at 0 or 100 % a Wilson bound equals the point only up to rounding (wilson(n, n)[1] is
    1 - 1e-16), and matplotlib refuses a negative bar."""
    return [[max(0.0, a - b) for a, b in zip(acc, lo)], [max(0.0, b - a) for a, b in zip(acc, hi)]]


def plot_curves(
    metrics: list[dict], path: Path, plt, effects: dict[str, dict] | None = None, every_n: int | None = None
) -> bool:
    held = _held_out(metrics, effects, every_n)
    if not any(held.values()) and not any(_series(metrics, k) for keys, _ in CURVES[1:] for k in keys):
        return False
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (keys, title) in zip(axes, CURVES):
        for key in keys:
            if key in held:
                pts = held[key]
                if pts:
                    steps, acc, lo, hi = zip(*pts)
                    err = interval_bars(acc, lo, hi)
                    ax.errorbar(steps, acc, yerr=err, marker="o", ms=3, capsize=3, label=key)
                continue
            pts = _series(metrics, key)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _phase_seconds(metrics: list[dict]) -> dict[str, list[float]]:
    """Seconds per phase per logged step (phases a run never entered left out)."""
    out = {n: [float(m.get(f"phase_{n}_s") or 0.0) for m in metrics] for n in PHASES}
    return {n: v for n, v in out.items() if any(v)}


def plot_phases(metrics: list[dict], path: Path, plt) -> bool:
    """One stacked bar per step: where its wall time went."""
    secs = _phase_seconds(metrics)
    if not secs:
        return False
    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(steps)), 3.6))
    bottom = [0.0] * len(steps)
    for name, vals in secs.items():
        ax.bar(steps, vals, bottom=bottom, label=name, width=0.8)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("step")
    ax.set_ylabel("seconds")
    ax.set_title("where each step's time goes")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def phase_table(metrics: list[dict]) -> list[str]:
    """Markdown lines: every phase's seconds and tokens over the logged steps, and its share."""
    secs = _phase_seconds(metrics)
    total = sum(map(sum, secs.values()))
    if not total:
        return []
    lines = ["Time per phase over the steps (r3fast.metric_schema.PHASES):", "",
             "| phase | seconds | share | tokens | tokens count |", "|---|---:|---:|---:|---|"]  # fmt: skip
    for name, vals in sorted(secs.items(), key=lambda kv: -sum(kv[1])):
        tokens = sum(int(m.get(f"phase_{name}_tokens") or 0) for m in metrics)
        lines.append(f"| {name} | {sum(vals):.1f} | {100 * sum(vals) / total:.0f} % | {tokens} | "
                     f"{PHASES[name][1]} |")  # fmt: skip
    return lines + [""]


def plot_metrics(
    metrics: list[dict],
    out_dir: str | Path,
    effects: dict[str, dict] | None = None,
    every_n: int | None = None,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = (
        [out_dir / "learning_curves.png"]
        if plot_curves(metrics, out_dir / "learning_curves.png", plt, effects, every_n)
        else []
    )
    if plot_phases(metrics, out_dir / "phases.png", plt):
        written.append(out_dir / "phases.png")
    for name, (keys, title) in PLOTS.items():
        keys = (keys,) if isinstance(keys, str) else keys
        series = {k: _series(metrics, k) for k in keys}
        if not any(series.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=key)
        if len(keys) > 1:
            ax.legend()
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    effects: dict[str, dict],
    metrics: list[dict],
    config: dict,
    seconds: float,
    writing: list[str] | None = None,
) -> Path:
    """writing: markdown lines on what the model writes (r3fast.report_examples), after the table."""
    run_dir = Path(run_dir)
    plots = plot_metrics(metrics, run_dir, effects, (config.get("eval") or {}).get("every_n"))
    lines = [f"# {title}", ""]
    if effects:
        lines += ["Held-out accuracy, vanilla vs trained, on the same problems:", ""]
        lines += [effect_table(effects), ""]
    lines += writing or []
    if metrics:
        last = metrics[-1]
        keys = [m.key for m in METRICS.values() if m.report]
        shown = [f"{k}={last[k]:.4g}" for k in keys if isinstance(last.get(k), (int, float))]
        lines += ["Last step: " + ", ".join(shown), ""]
        skipped = sum(1 for m in metrics if m.get("skipped_nonfinite"))
        if skipped:
            lines += [f"**{skipped} step(s) skipped for a non-finite loss or gradient norm.**", ""]
    lines += phase_table(metrics)
    lines += [f"Wall time: {seconds / 60:.1f} min over {len(metrics)} steps.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Config:", "```", _yaml(config), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False).strip()
