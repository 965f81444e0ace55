"""Writing in the Margins (WiM, arXiv 2408.14906): long-context inference, segment by segment.

    from r3fast.wim import wim_answer
    result = wim_answer(model, tokenizer, context, question, progress=True)
    result.answer, result.margins, result.timings

See `reading.py` for the loop, `hf_reader.py` / `vllm_reader.py` for the two backends and
`evaluate.py` for `r3fast wim` (baseline vs WiM with intervals). Names are imported on first use,
so `r3fast.wim.cli` (the argument parser) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Margin", "WimConfig", "WimReading", "WimResult", "make_reader", "plain_answer", "wim_answer"]

_HOME = {
    "wim_answer": "answer",
    "WimConfig": "config",
    "Margin": "reading",
    "WimReading": "reading",
    "WimResult": "reading",
    "make_reader": "reading",
    "plain_answer": "reading",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'r3fast.wim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"r3fast.wim.{_HOME[name]}"), name)
