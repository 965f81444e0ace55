"""The HF backend: one growing KV cache of the document; side requests are appended, then cropped.

    extend(ids)       prefill ids into the document cache (positions continue)
    continue_(ids, k) prefill ids on top, decode up to k tokens greedily, crop both back out: the
                      cache holds exactly the document again (transformers' `DynamicCache.crop`)
    choose(ids, a, b) a fresh cache (the classifier never sees the document): is token a likelier
                      than token b after ids?

Exact by construction: the cropped cache is the same tensors a margin-free segment-wise prefill
writes, so the final answer sees what a plain prefill of the document would (tests/test_wim_hf.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["HFReader", "decode_greedy", "prefill"]


@torch.no_grad()
def prefill(model: torch.nn.Module, ids: list[int], cache: DynamicCache) -> torch.Tensor:
    """Run ``ids`` through the model on top of ``cache`` (appends to it); logits after the last: [V]."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)  # [1, L]
    # logits_to_keep=1: a 4k-token prefill would otherwise write a [4k, V] logit tensor (~800 MB fp32)
    out = model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


@torch.no_grad()
def decode_greedy(
    model: torch.nn.Module, cache: DynamicCache, logits: torch.Tensor, max_new: int, stop_ids: set[int]
) -> list[int]:
    """Greedy tokens from ``logits`` (after the cache's last token); the stop token is kept, not fed."""
    out: list[int] = []
    for _ in range(max_new):
        token = int(logits.argmax())  # host-device sync, once per token
        out.append(token)
        if token in stop_ids or len(out) == max_new:
            break
        logits = prefill(model, [token], cache)
    return out


class HFReader:
    """WiM's HF backend over ``model`` (any causal LM whose cache layers can be cropped)."""

    def __init__(self, model: torch.nn.Module, stop_ids: set[int]) -> None:
        self.model = model.eval()
        self.stop_ids = set(stop_ids)
        self.reset()

    def reset(self) -> None:
        """Start a new document: empty cache, counters to zero."""
        self.cache = DynamicCache(config=self.model.config)
        self.length = 0
        self.last_logits: torch.Tensor | None = None
        self.counts = {"prefill_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}

    def extend(self, ids: list[int]) -> None:
        if not ids:
            return
        self.last_logits = prefill(self.model, ids, self.cache)
        self._check_croppable()
        self.length += len(ids)
        self.counts["prefill_tokens"] += len(ids)

    def continue_(self, ids: list[int], max_new: int) -> list[int]:
        """Generate after document + ``ids``; afterwards the cache is the document alone again."""
        try:
            logits = prefill(self.model, ids, self.cache)
            out = decode_greedy(self.model, self.cache, logits, max_new, self.stop_ids)
        finally:
            extra = self.cache.get_seq_length() - self.length
            if extra > 0:
                self.cache.crop(-extra)  # negative: remove that many (a positive value is a length)
        self.counts["prefill_tokens"] += len(ids)
        self.counts["generated_tokens"] += len(out)
        return out

    def choose(self, ids: list[int], a: int, b: int) -> bool:
        """True when token ``a`` scores above ``b`` right after ``ids`` (fresh cache, no document)."""
        logits = prefill(self.model, ids, DynamicCache(config=self.model.config))
        self.counts["prefill_tokens"] += len(ids)
        return bool(logits[a] > logits[b])  # host-device sync

    def _check_croppable(self) -> None:
        # Sliding-window or linear-attention layers keep only a window: cropping them back cannot
        # restore the document's state, so WiM on them would be silently inexact.
        if any(type(layer) is not DynamicLayer for layer in self.cache.layers):
            kinds = sorted({type(layer).__name__ for layer in self.cache.layers})
            raise NotImplementedError(f"WiM's HF path needs full-attention cache layers, got {kinds}")
