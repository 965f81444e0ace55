"""The paper's two-try measurement: first try, then (for failures) reflect and try again."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .generation import generate_chunked
from .prompts import REFLECT_PROMPT, render
from .rollout import reflect_and_retry
from .sampling import Sampler, SamplingParams
from .sampling.build import sampling_params
from .seeds import seed_for

if TYPE_CHECKING:
    from .config import R3Config

__all__ = ["EvalResult", "decoding_label", "evaluate", "evaluate_as_trained", "format_eval_table"]


@dataclass(kw_only=True)
class EvalResult:
    n: int
    first_correct: int
    second_correct: int
    """Right on the first try, or right on the retry after one reflection."""
    seconds: float
    records: list[dict] = field(default_factory=list)

    @property
    def first_acc(self) -> float:
        return self.first_correct / max(self.n, 1)

    @property
    def second_acc(self) -> float:
        return self.second_correct / max(self.n, 1)

    @classmethod
    def from_json(cls, raw: dict) -> EvalResult:
        """Back from the saved {"summary", "records"} file."""
        s = raw["summary"]
        return cls(
            n=s["n"],
            first_correct=s["first_try_correct"],
            second_correct=s["second_try_correct"],
            seconds=s["seconds"],
            records=raw["records"],
        )

    def summary(self) -> dict:
        return {
            "n": self.n,
            "first_try_correct": self.first_correct,
            "second_try_correct": self.second_correct,
            "first_try_accuracy": self.first_acc,
            "second_try_accuracy": self.second_acc,
            "seconds": self.seconds,
        }


def evaluate(
    sampler: Sampler,
    tokenizer,
    task,
    examples: list[dict],
    *,
    answer_params: SamplingParams,
    reflection_params: SamplingParams,
    chunk_size: int = 32,
    progress: bool = True,
    reflect_prompt: str = REFLECT_PROMPT,
) -> EvalResult:
    """One attempt per example; each failure gets one reflection and one retry."""
    t0 = time.perf_counter()
    task_msgs = [task.build_prompt(ex) for ex in examples]
    one = dataclasses.replace(answer_params, n=1)
    firsts = generate_chunked(
        sampler,
        [render(tokenizer, m) for m in task_msgs],
        one,
        chunk_size=chunk_size,
        desc="1st try",
        progress=progress,
    )
    records = []
    for ex, comps in zip(examples, firsts):
        text = comps[0].text
        records.append({"example": ex, "first_try": text, "first_ok": bool(task.verify(ex, text))})
    failed = [i for i, r in enumerate(records) if not r["first_ok"]]
    if failed:
        _, refl, retries = reflect_and_retry(
            sampler,
            tokenizer,
            [task_msgs[i] for i in failed],
            [records[i]["first_try"] for i in failed],
            n=1,
            reflection_params=reflection_params,
            answer_params=answer_params,
            chunk_size=chunk_size,
            progress=progress,
            reflect_prompt=reflect_prompt,
        )
        for i, r, s in zip(failed, refl, retries):
            ex = records[i]["example"]
            records[i].update(reflection=r[0].text, reflection_tokens=len(r[0].token_ids),
                              reflection_truncated=r[0].finish_reason == "length", second_try=s[0],
                              second_ok=bool(task.verify(ex, s[0])))  # fmt: skip
    first = sum(r["first_ok"] for r in records)
    second = first + sum(r.get("second_ok", False) for r in records)
    return EvalResult(
        n=len(examples),
        first_correct=first,
        second_correct=second,
        seconds=time.perf_counter() - t0,
        records=records,
    )


def evaluate_as_trained(
    cfg: R3Config,
    sampler: Sampler,
    tokenizer,
    task,
    *,
    n: int | None = None,
    temperature: float | None = None,
    split: str = "eval",
    progress: bool | None = None,
) -> EvalResult:
    """The run's evaluation protocol, the one `R3Trainer` and `r3fast eval` share: the first n
    (default eval.n) examples of `split` drawn with eval.problems_seed, answers and reflections
    seeded from their own `seed_for` streams, the sampler section's caps, top_p and chunk size, the
    task's reflection prompt; temperature: default the headline decoding (0 is greedy)."""
    t, s, e = cfg.trainer, cfg.sampler, cfg.eval
    n = e.n if n is None else n
    temperature = e.temperatures[0] if temperature is None else temperature
    return evaluate(
        sampler,
        tokenizer,
        task,
        task.dataset(n, seed=e.problems_seed, split=split),
        answer_params=sampling_params(s, reflection=False, seed=seed_for(t.seed, "eval-answer"),
                                      temperature=temperature),
        reflection_params=sampling_params(s, reflection=True, seed=seed_for(t.seed, "eval-reflect"),
                                          temperature=temperature),
        chunk_size=s.chunk_size,
        progress=cfg.metrics.progress if progress is None else progress,
        reflect_prompt=cfg.task.reflect_prompt,
    )  # fmt: skip


def decoding_label(temperature: float) -> str:
    """ "greedy" for temperature 0, else "T=0.9"."""
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def format_eval_table(rows: dict[str, EvalResult]) -> str:
    """A plain-text table, one row per labelled result."""
    lines = [f"{'':<12} {'n':>5} {'1st try':>10} {'2nd try':>10} {'seconds':>9}"]
    for label, r in rows.items():
        lines.append(
            f"{label:<12} {r.n:>5} {r.first_acc:>9.1%} {r.second_acc:>10.1%} {r.seconds:>9.1f}"
            f"   ({r.first_correct} → {r.second_correct} right)"
        )
    return "\n".join(lines)
