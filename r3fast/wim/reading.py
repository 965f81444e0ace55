"""WiM's reading loop: segment by segment into the cache, a margin after each, then the answer.

    reading = WimReading(model, tokenizer, context, question)
    for margin in reading:          # each margin as soon as it is written (the interactive design)
        print(margin.segment, margin.relevant, margin.text)
    result = reading.answer()       # reads what is left, then answers with the relevant margins

``model`` is a transformers causal LM (HF path: one KV cache, cropped after each margin), an
`r3fast.sampling.VLLMSampler` (vLLM path: requests sharing the growing prefix), or a reader object
with the `HFReader` methods. ``plain_answer`` is the baseline: the same prompt without margins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from r3fast.wim import prompts
from r3fast.wim.config import WimConfig
from r3fast.wim.segments import split_segments, tokenize_document

__all__ = ["Margin", "WimReading", "WimResult", "make_reader", "plain_answer", "stop_ids"]

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>")


@dataclass(frozen=True)
class Margin:
    segment: int
    """Index of the segment it was written after."""
    text: str
    relevant: bool
    """The classifier's verdict (with classify=False: True for every non-empty margin)."""
    tokens: int
    """Generated tokens."""
    seconds: float
    """Writing and classifying it, wall time."""


@dataclass
class WimResult:
    answer: str
    margins: list[Margin] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Wall seconds: prefill_s (document into the cache), margin_s, classify_s, answer_s, total_s."""
    counts: dict[str, int] = field(default_factory=dict)
    """Tokens: document, segments, prefill_tokens (computed), cached_tokens (vLLM reuse), generated_tokens."""

    @property
    def relevant(self) -> list[Margin]:
        return [m for m in self.margins if m.relevant]

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "margins": [asdict(m) for m in self.margins],
            "timings": self.timings,
            "counts": self.counts,
        }


def stop_ids(tokenizer) -> set[int]:
    """EOS plus the end-of-turn tokens of the common chat templates that this vocabulary has."""
    eos = tokenizer.eos_token_id
    ids = {eos} if isinstance(eos, int) else set(eos or [])
    vocab = tokenizer.get_vocab()
    return ids | {vocab[t] for t in _END_OF_TURN if t in vocab}


def make_reader(model: Any, tokenizer) -> Any:
    """The backend for ``model``: HFReader (torch module), VLLMReader (VLLMSampler), or ``model`` itself."""
    if isinstance(model, torch.nn.Module):
        from r3fast.wim.hf_reader import HFReader

        return HFReader(model, stop_ids(tokenizer))
    if hasattr(model, "llm"):
        from r3fast.wim.vllm_reader import VLLMReader

        return VLLMReader(model, stop_ids(tokenizer))
    if all(hasattr(model, m) for m in ("reset", "extend", "continue_", "choose", "counts")):
        return model
    raise TypeError(f"WiM needs a torch causal LM, a VLLMSampler or a reader, got {type(model).__name__}")


def _timed(timings: dict[str, float], key: str, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


class WimReading:
    """One document and one question read with WiM; iterate for margins, then call ``answer()``."""

    def __init__(
        self,
        model: Any,
        tokenizer,
        context: str,
        question: str,
        config: WimConfig | None = None,
        *,
        reader: Any = None,
    ) -> None:
        if not isinstance(context, str) or not context:
            raise ValueError("context must be a non-empty string")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        self.cfg = config or WimConfig()
        self.tokenizer = tokenizer
        self.question = question
        self.reader = reader if reader is not None else make_reader(model, tokenizer)
        self.frame = prompts.chat_frame(tokenizer)
        self.document, ends = tokenize_document(tokenizer, context)
        self.segments = split_segments(ends, self.cfg.segment_tokens, self.cfg.min_segment_fraction)
        self.margins: list[Margin] = []
        self.timings: dict[str, float] = dict.fromkeys(("prefill_s", "margin_s", "classify_s"), 0.0)
        vocab = tokenizer.get_vocab()
        self._yes_no = (vocab.get("YES"), vocab.get("NO"))
        if self.cfg.classify and None in self._yes_no:
            self._yes_no = tuple(prompts.encode(tokenizer, w)[0] for w in ("YES", "NO"))
        self._start = time.perf_counter()
        self._steps = self._read()
        self._result: WimResult | None = None

    def __iter__(self) -> Iterator[Margin]:
        return self._steps

    def _read(self) -> Iterator[Margin]:
        r, t = self.reader, self.timings
        r.reset()
        _timed(t, "prefill_s", r.extend, prompts.head(self.tokenizer, self.frame))
        ask = prompts.margin_request(self.tokenizer, self.frame, self.question)
        for i, seg in enumerate(self.segments):
            _timed(t, "prefill_s", r.extend, self.document[seg])
            start = time.perf_counter()
            ids = _timed(t, "margin_s", r.continue_, ask, self.cfg.margin_tokens)
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            relevant = bool(text) and (not self.cfg.classify or _timed(t, "classify_s", self._classify, text))
            margin = Margin(i, text, relevant, len(ids), time.perf_counter() - start)
            self.margins.append(margin)
            yield margin

    def _classify(self, margin: str) -> bool:
        ids = prompts.classifier_prompt(self.tokenizer, self.frame, self.question, margin)
        return self.reader.choose(ids, *self._yes_no)

    def answer(self) -> WimResult:
        """Finish reading (if the caller stopped iterating early) and answer; computed once."""
        if self._result is None:
            for _ in self._steps:
                pass
            notes = [m.text for m in self.margins if m.relevant]
            ask = prompts.final_request(self.tokenizer, self.frame, self.question, notes)
            ids = _timed(self.timings, "answer_s", self.reader.continue_, ask, self.cfg.answer_tokens)
            self.timings["total_s"] = time.perf_counter() - self._start
            self._result = WimResult(
                answer=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                margins=list(self.margins),
                timings=dict(self.timings),
                counts={"document": len(self.document), "segments": len(self.segments), **self.reader.counts},
            )
        return self._result


def plain_answer(
    model: Any, tokenizer, context: str, question: str, *, answer_tokens: int = 64, reader: Any = None
) -> WimResult:
    """The baseline: head + whole document + question in one prefill, then the answer; no margins."""
    r = reader if reader is not None else make_reader(model, tokenizer)
    frame = prompts.chat_frame(tokenizer)
    document, _ = tokenize_document(tokenizer, context)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    r.reset()
    _timed(timings, "prefill_s", r.extend, prompts.head(tokenizer, frame) + document)
    ask = prompts.final_request(tokenizer, frame, question)
    ids = _timed(timings, "answer_s", r.continue_, ask, answer_tokens)
    timings["total_s"] = time.perf_counter() - start
    return WimResult(
        answer=tokenizer.decode(ids, skip_special_tokens=True).strip(),
        timings=timings,
        counts={"document": len(document), "segments": 1, **r.counts},
    )
