"""Shared-prefix prefill: the run cut is optimal, and HF generation with it equals generation without."""

from __future__ import annotations

import itertools
import random

import torch

from r3fast.prompts import render, retry_messages
from r3fast.sampling import HFSampler, SamplingParams
from r3fast.sampling.prefix import common_prefix_len, shared_prefix_runs
from tests.conftest import tiny_llama


def _saved(rows, runs, min_shared):
    return sum((b - a - 1) * n for a, b, n in runs if n >= min_shared)


def _brute_force(rows, min_shared):
    """Best saving over every way of cutting rows into consecutive runs."""
    best = 0
    for cuts in itertools.product([False, True], repeat=len(rows) - 1):
        runs, a = [], 0
        for i, c in enumerate(cuts + (True,)):
            if c:
                group = rows[a : i + 1]
                n = min(len(r) - 1 for r in group)
                n = min([n] + [common_prefix_len(group[0], r) for r in group[1:]])
                runs.append((a, i + 1, n))
                a = i + 1
        best = max(best, _saved(rows, runs, min_shared))
    return best


def test_runs_cover_rows_share_real_prefixes_and_save_the_most():
    rng = random.Random(0)
    for _ in range(200):
        families = [
            [rng.randrange(3) for _ in range(rng.randrange(1, 8))] for _ in range(rng.randrange(1, 4))
        ]
        rows = sorted(f + [rng.randrange(3) for _ in range(rng.randrange(1, 5))]
                      for f in families for _ in range(rng.randrange(1, 4)))  # fmt: skip
        min_shared = rng.choice([1, 2, 4])
        runs = shared_prefix_runs(rows, min_shared)
        assert [a for a, _, _ in runs] == [0] + [b for _, b, _ in runs[:-1]] and runs[-1][1] == len(rows)
        for a, b, n in runs:
            for r in rows[a:b]:
                assert 0 <= n < len(r) and r[:n] == rows[a][:n]
        assert _saved(rows, runs, min_shared) == _brute_force(rows, min_shared)


def test_a_lone_row_keeps_all_but_its_last_token():
    assert shared_prefix_runs([[5, 6, 7]]) == [(0, 1, 2)]
    assert shared_prefix_runs([]) == []


def _families(tok) -> list[list[int]]:
    tasks = [[{"role": "user", "content": f"Use {a} and {b} to make {a + b}."}] for a, b in [(3, 5), (12, 7)]]
    reflections = ["I added wrong.", "The sum is off by one; I should check each number before answering."]
    return [render(tok, retry_messages(t, "1 + 1 = 2", r)) for t in tasks for r in reflections] + [
        render(tok, [{"role": "user", "content": "Hi"}])
    ]


def test_generation_with_shared_prefixes_equals_generation_without(smol_tokenizer):
    """Greedy, float64: the same tokens, and log-probs equal to float64 rounding."""
    model = tiny_llama(len(smol_tokenizer)).double()
    prompts = _families(smol_tokenizer)
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=10)
    plain = HFSampler(model, smol_tokenizer, share_prefix=False).generate(prompts, params)
    sampler = HFSampler(model, smol_tokenizer, max_batch_size=8)  # 15 rows: two batches
    flat = sorted(p for p in prompts for _ in range(3))
    _, _, cache = sampler._prefix_cache(flat[:8], torch.device("cpu"))
    assert cache is not None and cache.get_seq_length() > 0  # the shared path is the one tested
    shared = sampler.generate(prompts, params)
    for a, b in zip(plain, shared):
        for x, y in zip(a, b):
            assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
            torch.testing.assert_close(torch.tensor(y.logprobs), torch.tensor(x.logprobs), rtol=0, atol=1e-9)


def test_sampled_logprobs_with_shared_prefixes_match_a_full_forward(smol_tokenizer):
    model = tiny_llama(len(smol_tokenizer))
    prompts = _families(smol_tokenizer)
    out = HFSampler(model, smol_tokenizer).generate(
        prompts, SamplingParams(n=4, temperature=0.7, max_new_tokens=8, seed=1)
    )
    for prompt, group in zip(prompts, out):
        for c in group:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
            ref = torch.log_softmax(logits.float() / 0.7, -1).gather(1, torch.tensor(c.token_ids)[:, None])[
                :, 0
            ]
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)
