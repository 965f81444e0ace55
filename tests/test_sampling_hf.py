"""HFSampler on a tiny random Llama with SmolLM2's real tokenizer."""

from __future__ import annotations

import pytest
import torch

from r3fast.prompts import reflect_messages, render, retry_messages
from r3fast.sampling import HFSampler, Sampler, SamplingParams
from tests.conftest import tiny_llama


def _prompts(tok) -> list[list[int]]:
    return [
        render(tok, [{"role": "user", "content": "Hi"}]),
        render(
            tok, [{"role": "user", "content": "A much longer question, so that left padding is needed here."}]
        ),
    ]


def test_shapes_logprobs_and_stops(smol_tokenizer):
    model = tiny_llama(len(smol_tokenizer))
    sampler = HFSampler(model, smol_tokenizer, max_batch_size=3)  # 2 prompts x n=3: two batches
    assert isinstance(sampler, Sampler)
    prompts = _prompts(smol_tokenizer)
    out = sampler.generate(prompts, SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=0))
    assert [len(g) for g in out] == [3, 3]
    eos = smol_tokenizer.eos_token_id
    for prompt, group in zip(prompts, out):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            assert c.finish_reason in ("stop", "length")
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            else:
                assert len(c.token_ids) == 12
            # The recorded log-probs are those of logits / temperature, for the sampled tokens.
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
            ref = torch.log_softmax(logits.float() / 0.8, -1).gather(1, torch.tensor(c.token_ids)[:, None])[
                :, 0
            ]
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_seeded_calls_repeat_and_greedy_is_deterministic(smol_tokenizer):
    sampler = HFSampler(tiny_llama(len(smol_tokenizer)), smol_tokenizer)
    prompts = _prompts(smol_tokenizer)
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=123)
    a = [c.token_ids for g in sampler.generate(prompts, p) for c in g]
    b = [c.token_ids for g in sampler.generate(prompts, p) for c in g]
    assert a == b
    g = SamplingParams(n=2, temperature=0.0, max_new_tokens=8)
    greedy = sampler.generate(prompts, g)
    assert all(grp[0].token_ids == grp[1].token_ids for grp in greedy)


def test_empty_prompt_is_an_error(smol_tokenizer):
    sampler = HFSampler(tiny_llama(len(smol_tokenizer)), smol_tokenizer)
    with pytest.raises(ValueError, match="at least one token"):
        sampler.generate([[]], SamplingParams(max_new_tokens=2))


def test_bad_params_are_rejected():
    for kw in ({"n": 0}, {"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**kw)


def test_three_turn_conversation_renders_in_order(smol_tokenizer):
    task_msgs = [{"role": "user", "content": "Use 3 and 5 to make 8."}]
    ids = render(smol_tokenizer, retry_messages(task_msgs, "3 * 5 = 15", "I multiplied; I should add."))
    text = smol_tokenizer.decode(ids)
    first, failed, reflect = text.find("Use 3 and 5"), text.find("3 * 5 = 15"), text.find("Reflect on")
    reflection, again = text.find("I should add"), text.rfind("Use 3 and 5")
    assert 0 <= first < failed < reflect < reflection < again
    assert text.rstrip().endswith("assistant")  # ready for the retry
    prefix = render(smol_tokenizer, reflect_messages(task_msgs, "3 * 5 = 15"))
    assert smol_tokenizer.decode(prefix).rstrip().endswith("assistant")
