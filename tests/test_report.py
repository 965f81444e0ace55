"""report.md shows what the model learned to write (reflections side by side, chosen by a rule; the
length distribution) and a held-out curve that starts at the vanilla model, each point with its
interval."""

from __future__ import annotations

from r3fast.effect import effect
from r3fast.evaluate import EvalResult
from r3fast.report import _held_out, write_report
from r3fast.report_examples import reflection_examples, reflection_lengths


def result(first_right: set[int], second_right: set[int], n: int = 12, tag: str = "v") -> EvalResult:
    recs = []
    for i in range(n):
        r = {"example": {"i": i}, "first_try": "x", "first_ok": i in first_right}
        if i not in first_right:
            r |= {"reflection": f"{tag} reflection {i} " + "word " * i, "reflection_tokens": 4 + i,
                  "reflection_truncated": i % 3 == 0, "second_try": "y", "second_ok": i in second_right}
        recs.append(r)
    first = len(first_right)
    return EvalResult(n=n, first_correct=first, second_correct=first + len(second_right - first_right),
                      seconds=1.0, records=recs)  # fmt: skip


def test_examples_follow_the_rule_and_lengths_are_reported():
    v = result({0, 1}, {5}, tag="vanilla")
    t = result({0, 2, 3}, {4, 5, 6}, tag="trained")
    lines = reflection_examples(v, t, k=3)
    text = "\n".join(lines)
    # both wrong on the 1st try, in evaluation order: problems 4, 5, 6 (1 was right for vanilla, 2, 3 trained)
    assert [x for x in lines if x.startswith("- problem")] == [f"- problem `{{'i': {i}}}`" for i in (4, 5, 6)]
    assert "trained reflection 4" in text and "vanilla reflection 4" in text and "retry right" in text
    table = "\n".join(reflection_lengths(v, t))
    assert "| vanilla | 10 |" in table and "| trained | 9 |" in table and "tokens" in table


def test_curve_starts_at_the_vanilla_model_with_intervals(tmp_path):
    v, t = result({0, 1}, {5}), result({0, 2, 3}, {4, 5, 6})
    effects = {"T=0.9": effect(v, t)}
    metrics = [{"step": s, "reward_mean": 0.1, "eval_first_try": 0.25, "eval_second_try": 0.5}
               for s in (1, 2)]  # fmt: skip
    held = _held_out(metrics, effects, every_n=16)
    first = held["eval_first_try"]
    assert first[0][:2] == (0, 2 / 12) and first[-1][:2] == (2, 3 / 12)  # vanilla, then trained (n = 12)
    assert first[1][0] == 1 and first[1][2] < 0.25 < first[1][3]  # the periodic point with its interval
    path = write_report(tmp_path, title="t", effects=effects, metrics=metrics,
                        config={"eval": {"every_n": 16}}, seconds=1.0,
                        writing=reflection_examples(v, t))  # fmt: skip
    assert "Reflections on held-out failures" in path.read_text()
    assert (tmp_path / "learning_curves.png").is_file()
