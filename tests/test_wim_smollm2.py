"""WiM on the real SmolLM2-135M-Instruct (slow: loads the model): exact cache, a full reading."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from r3fast.tasks import get_task
from r3fast.wim import WimConfig, WimReading, prompts
from r3fast.wim.hf_reader import prefill

pytestmark = pytest.mark.slow


def test_wim_reading_on_smollm2():
    from r3fast.models import load_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_wim_hf.one_thread
    try:
        model, tok = load_model("smollm2-135m-instruct")
        task = get_task("multihop", context_tokens=400, chains=2)
        ex = task.dataset(1, seed=0, split="eval")[0]
        cfg = WimConfig(segment_tokens=160, margin_tokens=12, answer_tokens=8)
        reading = WimReading(model, tok, ex["context"], ex["question"], cfg)
        result = reading.answer()
        assert len(result.margins) == len(reading.segments) >= 2
        assert any(m.text for m in result.margins) and isinstance(result.answer, str) and result.answer
        assert 0.0 <= task.score(ex, result.answer) <= 1.0
        full = prompts.head(tok, reading.frame) + reading.document
        assert reading.reader.cache.get_seq_length() == len(full)  # every margin and the answer cropped
        ask = prompts.final_request(tok, reading.frame, ex["question"])
        torch.testing.assert_close(
            prefill(model, ask, reading.reader.cache),
            prefill(model, full + ask, DynamicCache(config=model.config)),
            atol=2e-3,
            rtol=1e-4,
        )
    finally:
        torch.set_num_threads(before)
