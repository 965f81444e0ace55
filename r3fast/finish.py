"""What a run leaves behind: the names it may write (for the manifest), and after its last step
(rank 0) the effect, the report, the model card, summary.json and the optional hub upload, last."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text_atomic
from .effect import effect, effect_table, write_effect
from .evaluate import EvalResult, decoding_label, format_eval_table
from .logging_setup import LOG_FILE
from .metrics import read_metrics
from .model_card import write_model_card
from .report import PLOTS, write_report
from .report_examples import reflection_examples, reflection_lengths
from .rundir import ARTEFACTS

__all__ = ["run_artefacts", "write_run_outputs"]


def run_artefacts(eval_temperatures: list[float]) -> list[str]:
    """Every top-level name a run may write, for the run directory's manifest."""
    evals = [
        f"eval_{who}_{decoding_label(t).replace('=', '')}.json"
        for who in ("vanilla", "trained")
        for t in eval_temperatures
    ]
    return [*ARTEFACTS, *evals, *PLOTS, "learning_curves.png", "phases.png", LOG_FILE]


def write_run_outputs(
    run_dir: Path,
    config: dict,
    *,
    final: Path,
    vanilla: dict[str, EvalResult],
    trained: dict[str, EvalResult],
    metrics_path: Path,
    task_name: str,
    summary: dict,
    push_to_hub: str | None,
) -> dict:
    """The run's summary (also written as summary.json), given its final model and evaluations."""
    effects = {k: effect(vanilla[k], trained[k]) for k in vanilla}
    writing = []
    if effects:  # the headline decoding's reflections, vanilla vs trained
        head = next(iter(vanilla))
        writing = reflection_lengths(vanilla[head], trained[head]) + reflection_examples(
            vanilla[head], trained[head]
        )
    if effects:
        for k in vanilla:
            print(format_eval_table({f"vanilla {k}": vanilla[k], f"trained {k}": trained[k]}))
        print(effect_table(effects))
        summary["effect"] = write_effect(run_dir, effects, config, summary["seconds"])
    report = write_report(
        run_dir,
        title=f"R3 on {task_name} — {config['model']['name']}",
        effects=effects,
        metrics=read_metrics(metrics_path),
        config=config,
        seconds=summary["seconds"],
        writing=writing,
    )
    summary["report"] = str(report)
    write_model_card(final, config, task_name=task_name, effects=effects, repo_id=push_to_hub)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    if push_to_hub:  # last: a failed upload (one line) leaves every artefact of the run in place
        from .hub_push import push_folder

        summary["pushed_to"] = push_folder(final, push_to_hub)
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
