"""What the model learned to write, for `report.md`: held-out reflections of the vanilla and the
trained model side by side, and the reflection lengths before and after.

The examples are chosen by a rule, never by hand: the first k held-out problems, in evaluation
order, that both models got wrong on the first try, so that both wrote a reflection on the same
problem from the same seed stream (eval-reflect), each shown with whether its retry succeeded.
"""

from __future__ import annotations

import statistics

from .evaluate import EvalResult

__all__ = ["reflection_examples", "reflection_lengths"]

RULE = ("the first {k} held-out problems, in evaluation order, that both models got wrong on the first "
        "try (so both reflected on the same problem, from the same seed stream)")  # fmt: skip


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + " …") if len(text) > limit else text


def reflection_examples(vanilla: EvalResult, trained: EvalResult, k: int = 4) -> list[str]:
    """Markdown lines: up to k problems by the rule above, vanilla and trained reflection each."""
    both = [(v, t) for v, t in zip(vanilla.records, trained.records, strict=True)
            if not v["first_ok"] and not t["first_ok"]][:k]  # fmt: skip
    if not both:
        return []
    lines = [f"Reflections on held-out failures ({RULE.format(k=k)}):", ""]
    for v, t in both:
        lines.append(f"- problem `{_quote(v['example'], 200)}`")
        for who, r in (("vanilla", v), ("trained", t)):
            verdict = "retry right" if r.get("second_ok") else "retry wrong"
            lines.append(f"  - **{who}** ({verdict}): {_quote(r.get('reflection', ''))}")
    return lines + [""]


def _lengths(res: EvalResult) -> tuple[list[int], list[bool], str]:
    refl = [r for r in res.records if "reflection" in r]
    if refl and all("reflection_tokens" in r for r in refl):
        return [r["reflection_tokens"] for r in refl], [r["reflection_truncated"] for r in refl], "tokens"
    return [len(r["reflection"].split()) for r in refl], [], "words"  # records written before the count


def reflection_lengths(vanilla: EvalResult, trained: EvalResult) -> list[str]:
    """Markdown lines: a small table of reflection lengths (p10 / median / p90) and the share cut at
    the cap, vanilla vs trained, over every held-out reflection."""
    rows = []
    for who, res in (("vanilla", vanilla), ("trained", trained)):
        lens, cut, unit = _lengths(res)
        if not lens:
            continue
        q = statistics.quantiles(lens, n=10) if len(lens) > 1 else [lens[0]] * 9
        share = f"{100 * sum(cut) / len(cut):.0f} %" if cut else "—"
        rows.append(f"| {who} | {len(lens)} | {q[0]:.0f} / {statistics.median(lens):.0f} / {q[8]:.0f} {unit} "
                    f"| {share} |")  # fmt: skip
    if not rows:
        return []
    return ["Reflection lengths on the held-out set:", "",
            "| model | reflections | p10 / median / p90 | cut at the cap |", "|---|---:|---:|---:|",
            *rows, ""]  # fmt: skip
