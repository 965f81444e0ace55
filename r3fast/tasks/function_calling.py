"""Function calling (APIGen/xLAM, BFCL): query + tool schemas -> JSON list of calls.

    task = get_task("function_calling")                     # BFCL simple_python from bfcl-eval
    task = get_task("function_calling", path="xlam.json")   # or xLAM JSON/JSONL, or BFCL JSONL

Data shapes and loaders: ``fc_data``; reply format and matching rules: ``fc_match``.
"""

from __future__ import annotations

import json
from pathlib import Path

from r3fast.tasks.base import Example, Message, check_split, select_split
from r3fast.tasks.fc_data import load_examples
from r3fast.tasks.fc_match import verify as verify_calls

__all__ = ["FunctionCallingTask", "build_prompt", "INSTRUCTION"]

INSTRUCTION = 'Reply with only a JSON list of calls: [{"name": "tool_name", "arguments": {...}}]'


def build_prompt(example: Example) -> list[Message]:
    """System: the tool schemas (one JSON per line) and the reply format; user: the query."""
    tools = "\n".join(json.dumps(t, ensure_ascii=False) for t in example["tools"])
    system = f"You can call these tools:\n{tools}\n\n{INSTRUCTION}"
    if example.get("system"):  # BFCL turns that carry their own system message
        system = f"{example['system']}\n\n{system}"
    return [{"role": "system", "content": system}, {"role": "user", "content": example["query"]}]


class FunctionCallingTask:
    """Examples from a file (see ``fc_data``); train/eval by a hash of the example id."""

    name = "function_calling"

    def __init__(
        self,
        path: str | Path | None = None,
        format: str = "auto",
        possible_answer_path: str | Path | None = None,
        eval_fraction: float = 0.2,
    ) -> None:
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        self.examples = load_examples(path, format, possible_answer_path)
        self.eval_fraction = eval_fraction

    def build_prompt(self, example: Example) -> list[Message]:
        return build_prompt(example)

    def verify(self, example: Example, completion: str) -> bool:
        return verify_calls(example, completion)

    def dataset(self, n: int | None, seed: int = 0, split: str = "train") -> list[Example]:
        """Up to ``n`` examples of ``split`` (all if None), shuffled by ``seed``."""
        check_split(split)
        return select_split(
            self.examples, n, seed, split, key=lambda ex: ex["id"], eval_fraction=self.eval_fraction
        )

    def __repr__(self) -> str:
        return f"FunctionCallingTask({len(self.examples)} examples)"
