"""The vLLM backend: WiM as requests that share the growing document prefix (prefix caching).

vLLM has no cache to crop; instead every request is the whole prompt so far, and its automatic
prefix cache recognises the document blocks computed by the previous request:

    margin i   head + seg 0..i + margin ask      computes seg i (+ the ask); seg 0..i-1 are cache hits
    answer     head + seg 0..n-1 + final ask     computes the ask only

The cache works in blocks (16 tokens on CPU), so up to a block of document per request is
recomputed; ``counts["cached_tokens"]`` says how much was reused (vLLM's `num_cached_tokens`).
`reset` clears the prefix cache, so each document starts cold and timings compare with HF's.
These calls sit here, not in `r3fast.sampling.vllm_compat`, because they need what the sampler
contract does not return (cached-token counts, a choice between two tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from r3fast.sampling import vllm_compat as compat

__all__ = ["VLLMReader"]


class VLLMReader:
    """WiM's vLLM backend over an `r3fast.sampling.VLLMSampler` (its engine, threads and tokenizer)."""

    def __init__(self, sampler: Any, stop_ids: set[int]) -> None:
        self.sampler = sampler
        self.stop_ids = sorted(stop_ids)
        self.reset()

    def reset(self) -> None:
        self.document: list[int] = []
        self.counts = {"prefill_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        self.sampler.wake()
        compat.reset_prefix_cache(self.sampler.llm)

    def extend(self, ids: list[int]) -> None:
        self.document += ids  # computed by the next request, as part of its prompt

    def continue_(self, ids: list[int], max_new: int) -> list[int]:
        return self._run(self.document + ids, max_tokens=max_new)

    def choose(self, ids: list[int], a: int, b: int) -> bool:
        # Greedy over the two allowed tokens is the HF path's logit comparison.
        return self._run(ids, max_tokens=1, allowed_token_ids=[a, b]) == [a]

    def _run(self, prompt: list[int], **kwargs: Any) -> list[int]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, stop_token_ids=self.stop_ids, detokenize=False, **kwargs)
        with self._threads():
            (out,) = self.sampler.llm.generate(
                [TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False
            )
        cached = out.num_cached_tokens or 0
        tokens = list(out.outputs[0].token_ids)
        self.counts["prefill_tokens"] += len(prompt) - cached
        self.counts["cached_tokens"] += cached
        self.counts["generated_tokens"] += len(tokens)
        return tokens

    @contextmanager
    def _threads(self) -> Iterator[None]:
        n = getattr(self.sampler, "cpu_threads", None)
        before = torch.get_num_threads()
        if n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
