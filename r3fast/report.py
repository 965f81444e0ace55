"""End-of-run artefacts: PNG plots of the training curves and `report.md` with the paper's
four columns (vanilla 1st / 2nd try, trained 1st / 2nd try)."""

from __future__ import annotations

from pathlib import Path

from .evaluate import EvalResult

__all__ = ["four_column_table", "plot_metrics", "write_report"]

PLOTS = {
    "reward.png": ("reward_mean", "reward (retry success after a reflection)"),
    "retry_success.png": ("retry_success", "retries right after a reflection (fraction)"),
    "groups_with_signal.png": ("frac_groups_with_signal", "fraction of groups with a reward signal"),
    "reflection_length.png": ("reflection_len_mean", "reflection length (tokens)"),
    "eval.png": (("eval_first_try", "eval_second_try"), "held-out accuracy (trainer.eval_every)"),
}


def plot_metrics(metrics: list[dict], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    for name, (keys, title) in PLOTS.items():
        keys = (keys,) if isinstance(keys, str) else keys
        # Numbers only: a diverged step logs null (metrics.jsonl is strict JSON).
        series = {k: [(m["step"], m[k]) for m in metrics if isinstance(m.get(k), (int, float))] for k in keys}
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


def four_column_table(vanilla: EvalResult, trained: EvalResult) -> str:
    return "\n".join(
        [
            "| n | vanilla 1st try | vanilla 2nd try | trained 1st try | trained 2nd try |",
            "|---:|---:|---:|---:|---:|",
            f"| {vanilla.n} | {vanilla.first_acc:.1%} | {vanilla.second_acc:.1%} "
            f"| {trained.first_acc:.1%} | {trained.second_acc:.1%} |",
        ]
    )


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    vanilla: EvalResult | None,
    trained: EvalResult | None,
    metrics: list[dict],
    config: dict,
    seconds: float,
) -> Path:
    run_dir = Path(run_dir)
    plots = plot_metrics(metrics, run_dir)
    lines = [f"# {title}", ""]
    if vanilla is not None and trained is not None:
        lines += ["Held-out accuracy (2nd try = right on the 1st try, or right after one reflection):", ""]
        lines += [four_column_table(vanilla, trained), ""]
    if metrics:
        last = metrics[-1]
        keys = ("reward_mean", "frac_groups_with_signal", "reflection_len_mean", "loss", "kl", "tokens_per_s")
        shown = [f"{k}={last[k]:.4g}" for k in keys if isinstance(last.get(k), (int, float))]
        lines += ["Last step: " + ", ".join(shown), ""]
        skipped = sum(1 for m in metrics if m.get("skipped_nonfinite"))
        if skipped:
            lines += [f"**{skipped} step(s) skipped for a non-finite loss or gradient norm.**", ""]
    lines += [f"Wall time: {seconds / 60:.1f} min over {len(metrics)} steps.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Config:", "```", _yaml(config), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False).strip()
