"""The offline failure set: sample up to K first attempts per example, keep the failures.

Each JSONL line is one `Failure.to_record()`: the example, the failed attempt (text and token
ids), the model, the sampling parameters and the seed, so a failure set is reproducible and
self-describing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_text_atomic
from .failure_file import Failure
from .generation import generate_chunked
from .phases import phase
from .prompts import render
from .sampling import Sampler, SamplingParams

__all__ = ["MineResult", "mine_failures", "write_jsonl_atomic"]


@dataclass(kw_only=True)
class MineResult:
    failures: list[Failure]
    """The kept failures, in example order."""
    examples: int
    attempts: int
    correct_attempts: int
    examples_solved_once: int

    def summary(self) -> dict:
        return {
            "examples": self.examples,
            "attempts": self.attempts,
            "first_try_accuracy": self.correct_attempts / max(self.attempts, 1),
            "examples_solved_at_least_once": self.examples_solved_once,
            "failures_kept": len(self.failures),
        }

    @property
    def records(self) -> list[dict]:
        """One per kept failure, as written to JSONL."""
        return [f.to_record() for f in self.failures]


def mine_failures(
    sampler: Sampler,
    tokenizer,
    task,
    examples: list[dict],
    *,
    tries: int,
    params: SamplingParams,
    model_name: str = "",
    chunk_size: int = 64,
    progress: bool = True,
    keep_per_example: int | None = None,
) -> MineResult:
    """Sample `tries` first attempts per example; keep failed ones (at most `keep_per_example`)."""
    prompts = [render(tokenizer, task.build_prompt(ex)) for ex in examples]
    with phase("mine") as p:
        outs = generate_chunked(
            sampler, prompts, params, n=tries, chunk_size=chunk_size, desc="mine", progress=progress
        )
        p.tokens += sum(len(c.token_ids) for comps in outs for c in comps)
        verdicts = [[bool(task.verify(ex, c.text)) for c in comps] for ex, comps in zip(examples, outs)]
    meta = {"model": model_name, "task": getattr(task, "name", ""), "sampling": dataclasses.asdict(params)}
    failures, correct, solved = [], 0, 0
    for idx, (ex, comps, oks) in enumerate(zip(examples, outs, verdicts)):
        correct += sum(oks)
        solved += any(oks)
        kept = [c for c, ok in zip(comps, oks) if not ok][:keep_per_example]
        failures += [
            Failure(
                example=ex, attempt=c.text, attempt_ids=c.token_ids, example_index=idx, try_index=j, **meta
            )
            for j, c in enumerate(kept)
        ]
    return MineResult(
        failures=failures,
        examples=len(examples),
        attempts=len(examples) * tries,
        correct_attempts=correct,
        examples_solved_once=solved,
    )


def write_jsonl_atomic(path: str | Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
