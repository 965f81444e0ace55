"""Baseline vs WiM on the same examples of a long-context task: scores, 95 % intervals, overhead.

Per example the baseline (one prefill of the document, then the answer) and WiM (segments,
margins, classification, answer with the relevant margins) run on one backend, one after the
other. Intervals: Wilson for accuracies, percentile bootstrap for mean F1, paired bootstrap (the
same examples resampled for both) for the WiM - baseline gap.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from r3fast.stats import bootstrap_mean, paired_bootstrap, wilson
from r3fast.wim.config import WimConfig
from r3fast.wim.progress import MarginProgress
from r3fast.wim.reading import WimReading, make_reader, plain_answer

__all__ = ["evaluate_wim", "format_wim_table", "summarize"]


def _score(task: Any, example: dict, completion: str) -> float:
    if hasattr(task, "score"):
        return float(task.score(example, completion))
    return float(task.verify(example, completion))


def evaluate_wim(
    model: Any,
    tokenizer,
    task: Any,
    examples: Sequence[dict],
    config: WimConfig,
    *,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One record per example: the gold answer, then baseline and WiM answers, scores and costs."""
    reader = make_reader(model, tokenizer)
    records = []
    for i, ex in enumerate(examples):
        base = plain_answer(
            None, tokenizer, ex["context"], ex["question"], answer_tokens=config.answer_tokens, reader=reader
        )
        reading = WimReading(None, tokenizer, ex["context"], ex["question"], config, reader=reader)
        desc = f"{task.name} {i + 1}/{len(examples)}"
        with MarginProgress(len(reading.segments), desc=desc, disable=not progress) as bar:
            for margin in reading:
                bar.update(margin)
        wim = reading.answer()
        record = {
            "index": i,
            "gold": ex.get("answer"),
            "baseline": {**base.to_dict(), "score": _score(task, ex, base.answer)},
            "wim": {**wim.to_dict(), "score": _score(task, ex, wim.answer)},
        }
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def _interval(scores: list[float], metric: str, seed: int) -> list[float]:
    if metric == "accuracy":
        return list(wilson(sum(scores), len(scores)))
    return list(bootstrap_mean(scores, seed=seed))


def summarize(records: Sequence[dict], metric: str, *, seed: int = 0) -> dict[str, Any]:
    """Means, 95 % intervals and per-example costs of both arms, and the paired gap."""
    out: dict[str, Any] = {"n": len(records), "metric": metric}
    if not records:
        return out
    for arm in ("baseline", "wim"):
        scores = [r[arm]["score"] for r in records]
        out[arm] = {
            "score": statistics.fmean(scores),
            "ci95": _interval(scores, metric, seed),
            "seconds": statistics.fmean(r[arm]["timings"]["total_s"] for r in records),
            **{
                k: statistics.fmean(r[arm]["counts"][k] for r in records)
                for k in ("prefill_tokens", "cached_tokens", "generated_tokens", "document", "segments")
            },
        }
    wim = out["wim"]
    wim["margins_relevant"] = statistics.fmean(
        sum(m["relevant"] for m in r["wim"]["margins"]) for r in records
    )
    for phase in ("prefill_s", "margin_s", "classify_s", "answer_s"):
        wim[phase] = statistics.fmean(r["wim"]["timings"].get(phase, 0.0) for r in records)
    mean, lo, hi = paired_bootstrap(
        [r["baseline"]["score"] for r in records], [r["wim"]["score"] for r in records], seed=seed
    )
    out["gap"] = {"wim_minus_baseline": mean, "ci95": [lo, hi], "method": "paired bootstrap, 10k resamples"}
    out["overhead"] = {
        "seconds": wim["seconds"] - out["baseline"]["seconds"],
        "time_ratio": wim["seconds"] / out["baseline"]["seconds"],
        "prefill_tokens": wim["prefill_tokens"] - out["baseline"]["prefill_tokens"],
        "generated_tokens": wim["generated_tokens"] - out["baseline"]["generated_tokens"],
    }
    return out


def format_wim_table(summaries: dict[str, dict]) -> str:
    """One block per task: both arms and the gap, costs per example."""
    head = f"{'task':<10} {'arm':<9} {'score':>6}  {'95% CI':<16} "
    head += f"{'s/ex':>6} {'prefill':>8} {'gen':>6} {'seg':>4}"
    lines = [head, "-" * len(head)]
    for task, s in summaries.items():
        if s["n"] == 0:
            lines.append(f"{task:<10} (no examples)")
            continue
        for arm in ("baseline", "wim"):
            a = s[arm]
            ci = f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]"
            lines.append(
                f"{task:<10} {arm:<9} {a['score']:>6.3f}  {ci:<16} {a['seconds']:>6.1f} "
                f"{a['prefill_tokens']:>8.0f} {a['generated_tokens']:>6.1f} {a['segments']:>4.1f}"
            )
        g, o = s["gap"], s["overhead"]
        ci = f"[{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
        lines.append(
            f"{task:<10} {'gap':<9} {g['wim_minus_baseline']:>+6.3f}  {ci:<16} "
            f"x{o['time_ratio']:.2f} time, n={s['n']} ({s['metric']}), "
            f"{s['wim']['margins_relevant']:.1f} relevant margins/example"
        )
    return "\n".join(lines)
