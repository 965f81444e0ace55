"""`wim_answer`: the one-call entry point (reading loop + optional progress bar and margin callback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from r3fast.wim.config import WimConfig
from r3fast.wim.progress import MarginProgress
from r3fast.wim.reading import Margin, WimReading, WimResult

__all__ = ["wim_answer"]


def wim_answer(
    model: Any,
    tokenizer,
    context: str,
    question: str,
    *,
    segment_tokens: int = 512,
    margin_tokens: int = 100,
    answer_tokens: int = 64,
    classify: bool = True,
    on_margin: Callable[[Margin], None] | None = None,
    progress: bool = False,
    reader: Any = None,
) -> WimResult:
    """Answer ``question`` about ``context`` with Writing in the Margins (arXiv 2408.14906).

    model: a transformers causal LM (HF path) or an `r3fast.sampling.VLLMSampler` (vLLM path).
    segment_tokens / margin_tokens / answer_tokens: see `WimConfig`. classify: keep only the margins
    the model itself judges relevant (False: keep every non-empty one). on_margin: called with each
    margin as soon as it is written. progress: a bar over segments with the relevant-margin count.
    reader: reuse a backend across calls (e.g. one `HFReader` for a whole evaluation).
    """
    cfg = WimConfig(
        segment_tokens=segment_tokens,
        margin_tokens=margin_tokens,
        answer_tokens=answer_tokens,
        classify=classify,
    )
    reading = WimReading(model, tokenizer, context, question, cfg, reader=reader)
    with MarginProgress(len(reading.segments), disable=not progress) as bar:
        for margin in reading:
            bar.update(margin)
            if on_margin is not None:
                on_margin(margin)
    return reading.answer()
