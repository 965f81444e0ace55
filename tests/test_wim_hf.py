"""WiM on the HF backend with a tiny random Llama: the cropped cache is exact, margins never leak,
the margin stream and the counters are consistent, the evaluation runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from transformers import DynamicCache

from r3fast.tasks import get_task
from r3fast.wim import WimConfig, WimReading, plain_answer, prompts, wim_answer
from r3fast.wim.evaluate import evaluate_wim, format_wim_table, summarize
from r3fast.wim.hf_reader import HFReader, decode_greedy, prefill
from r3fast.wim.reading import stop_ids

QUESTION = "In which city are the headquarters of the company that Alice works for?"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Token-by-token decoding of a tiny model is all thread start-up: on a shared 2-core box one
    thread ran these tests ~10x faster than two (OpenMP spin-waits against other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def document():
    return get_task("multihop", context_tokens=400, chains=2).dataset(1, seed=0)[0]["context"]


def _cache_tensors(cache: DynamicCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cropped_cache_equals_a_plain_prefill(smol_tokenizer, document, dtype, atol):
    model = tiny_llama(len(smol_tokenizer)).to(dtype)
    reading = WimReading(
        model, smol_tokenizer, document, QUESTION, WimConfig(segment_tokens=64, margin_tokens=6)
    )
    margins = list(reading)
    assert len(margins) == len(reading.segments) > 3 and all(m.tokens > 0 for m in margins)
    reader, frame = reading.reader, reading.frame
    head = prompts.head(smol_tokenizer, frame)
    full = head + reading.document
    assert reader.cache.get_seq_length() == reader.length == len(full)

    # Bit for bit the cache of the same segment-wise prefill with no margins at all.
    plain = DynamicCache(config=model.config)
    prefill(model, head, plain)
    for seg in reading.segments:
        last = prefill(model, reading.document[seg], plain)
    assert all(torch.equal(a, b) for a, b in zip(_cache_tensors(reader.cache), _cache_tensors(plain)))
    assert torch.equal(reader.last_logits, last)

    # And, up to rounding, a one-shot prefill of the whole document: after the last segment and
    # after the final request on top of the cropped cache.
    one_shot = DynamicCache(config=model.config)
    torch.testing.assert_close(prefill(model, full, one_shot), reader.last_logits, atol=atol, rtol=0)
    ask = prompts.final_request(smol_tokenizer, frame, QUESTION, ["a note"])
    torch.testing.assert_close(
        prefill(model, full + ask, DynamicCache(config=model.config)),
        prefill(model, ask, reader.cache),
        atol=atol,
        rtol=0,
    )


def test_margins_never_leak_into_the_answer(smol_tokenizer, document):
    model = tiny_llama(len(smol_tokenizer), seed=1).double()
    reading = WimReading(
        model, smol_tokenizer, document, QUESTION, WimConfig(segment_tokens=96, margin_tokens=5)
    )
    result = reading.answer()
    head = prompts.head(smol_tokenizer, reading.frame)
    assert reading.reader.cache.get_seq_length() == len(head) + len(reading.document)  # answer cropped too
    # The answer is what the model says to the plain prompt: document + relevant notes + question.
    notes = [m.text for m in result.margins if m.relevant]
    ask = prompts.final_request(smol_tokenizer, reading.frame, QUESTION, notes)
    cache = DynamicCache(config=model.config)
    logits = prefill(model, head + reading.document + ask, cache)
    ids = decode_greedy(model, cache, logits, reading.cfg.answer_tokens, reading.reader.stop_ids)
    assert result.answer == smol_tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_stream_callback_progress_and_counts(smol_tokenizer, document, capsys):
    model = tiny_llama(len(smol_tokenizer), seed=2)
    seen = []
    result = wim_answer(
        model,
        smol_tokenizer,
        document,
        QUESTION,
        segment_tokens=80,
        margin_tokens=4,
        answer_tokens=3,
        on_margin=seen.append,
        progress=True,
    )
    assert seen == result.margins and [m.segment for m in seen] == list(range(result.counts["segments"]))
    n, last = result.counts["segments"], capsys.readouterr().err.splitlines()[-1]
    assert f"{n}/{n} seg" in last and last.endswith(f"relevant={len(result.relevant)}")  # redirected: lines
    frame = prompts.chat_frame(smol_tokenizer)
    c = result.counts
    assert 1 <= c["generated_tokens"] - sum(m.tokens for m in seen) <= 3  # + the answer's tokens
    classifier = sum(
        len(prompts.classifier_prompt(smol_tokenizer, frame, QUESTION, m.text)) for m in seen if m.text
    )
    ask = len(prompts.margin_request(smol_tokenizer, frame, QUESTION))
    final = len(prompts.final_request(smol_tokenizer, frame, QUESTION, [m.text for m in result.relevant]))
    head = len(prompts.head(smol_tokenizer, frame))
    assert c["prefill_tokens"] == head + c["document"] + c["segments"] * ask + classifier + final
    assert set(result.timings) == {"prefill_s", "margin_s", "classify_s", "answer_s", "total_s"}


def test_partial_iteration_then_answer(smol_tokenizer, document):
    model = tiny_llama(len(smol_tokenizer), seed=3)
    reading = WimReading(
        model, smol_tokenizer, document, QUESTION, WimConfig(segment_tokens=100, margin_tokens=3)
    )
    first = next(iter(reading))
    assert first.segment == 0 and len(reading.margins) == 1  # produced one at a time
    result = reading.answer()
    assert len(result.margins) == len(reading.segments) and result.margins[0] == first
    assert reading.answer() is result


def test_classify_off_keeps_every_nonempty_margin(smol_tokenizer, document):
    model = tiny_llama(len(smol_tokenizer), seed=4)
    result = wim_answer(
        model, smol_tokenizer, document, QUESTION, margin_tokens=3, answer_tokens=2, classify=False
    )
    assert all(m.relevant == bool(m.text) for m in result.margins) and "classify_s" in result.timings
    assert result.timings["classify_s"] == 0.0


class _RejectAll(HFReader):
    """A reader whose classifier keeps no margin."""

    def choose(self, ids: list[int], a: int, b: int) -> bool:
        return False


def test_baseline_equals_wim_without_notes(smol_tokenizer, document):
    """No relevant margin -> WiM's final prompt is the baseline's: same answer."""
    model = tiny_llama(len(smol_tokenizer), seed=5).double()
    base = plain_answer(model, smol_tokenizer, document, QUESTION, answer_tokens=6)
    reader = _RejectAll(model, stop_ids(smol_tokenizer))
    wim = wim_answer(
        None, smol_tokenizer, document, QUESTION, answer_tokens=6, margin_tokens=2, reader=reader
    )
    assert not wim.relevant and wim.answer == base.answer
    assert base.counts["segments"] == 1 and base.counts["generated_tokens"] <= 6


def test_bad_inputs(smol_tokenizer):
    with pytest.raises(TypeError, match="WiM needs"):
        wim_answer("not a model", smol_tokenizer, "text", QUESTION)
    with pytest.raises(ValueError, match="context"):
        WimReading(tiny_llama(len(smol_tokenizer)), smol_tokenizer, "", QUESTION)
    with pytest.raises(ValueError, match="segment_tokens"):
        WimConfig(segment_tokens=0)


def test_evaluate_and_summary_on_tiny_model(smol_tokenizer):
    model = tiny_llama(len(smol_tokenizer), seed=6)
    cfg = WimConfig(segment_tokens=128, margin_tokens=3, answer_tokens=3)
    table = {}
    for name, opts in [
        ("multihop", {"context_tokens": 300}),
        ("cwe", {"context_tokens": 400, "num_common": 2, "common_freq": 8}),
    ]:
        task = get_task(name, **opts)
        records = evaluate_wim(model, smol_tokenizer, task, task.dataset(2, seed=0), cfg, progress=False)
        s = summarize(records, task.metric)
        json.dumps(records)
        assert s["n"] == 2 and s["wim"]["segments"] > 1 and s["baseline"]["segments"] == 1
        for arm in ("baseline", "wim"):
            lo, hi = s[arm]["ci95"]
            assert 0.0 <= lo <= s[arm]["score"] <= hi <= 1.0
        assert s["gap"]["ci95"][0] <= s["gap"]["wim_minus_baseline"] <= s["gap"]["ci95"][1]
        assert s["overhead"]["generated_tokens"] > 0
        table[name] = s
    text = format_wim_table(table)
    assert "multihop" in text and "cwe" in text and "gap" in text
