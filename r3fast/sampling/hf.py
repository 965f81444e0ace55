"""`HFSampler`: the Sampler contract on top of transformers' `generate` (CPU and CUDA).

Shares the learner's module, so `sync_weights` has nothing to copy; under FSDP2 it generates from a
whole-weights copy of its own (`own_weights=True`: ranks generate different lengths, and sharded
weights would make every token a collective), refreshed by `sync_weights`. Per-token log-probs are
taken under `logits / temperature` (before top-p) by a logits processor that runs ahead of
the sampling warpers, so no `[steps, B, V]` score tensor is ever kept.

Rows that share a prompt prefix (a reflection prompt sampled G times, the G retries after it, the
chat template's system turn) prefill it once: the prefix's KV cache is computed per run of rows
(`prefix.shared_prefix_runs`) and expanded to its rows, and `generate` continues from it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList

from ..model.lm import whole_weights
from .base import Completion, SamplingParams
from .prefix import shared_prefix_runs

__all__ = ["HFSampler"]


class _LogprobRecorder(LogitsProcessor):
    """Records log p(token) for each sampled token; sees the raw scores before any warper.

    At step k the freshly appended column of `input_ids` is the token sampled at step k-1, so
    it is scored against the log-softmax row kept from step k-1 (one [B, V] row alive at a time).
    """

    def __init__(self, temperature: float, prompt_len: int) -> None:
        self.scale = 1.0 / temperature if temperature > 0 else 1.0
        self.prompt_len = prompt_len
        self.prev: torch.Tensor | None = None  # [B, V] log-softmax of the previous step
        self.logprobs: list[torch.Tensor] = []  # each [B]

    def flush(self, last_tokens: torch.Tensor) -> None:
        if self.prev is not None:
            self.logprobs.append(self.prev.gather(1, last_tokens[:, None]).squeeze(1))
            self.prev = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self.flush(input_ids[:, -1])
        self.prev = torch.log_softmax(scores.float() * self.scale, dim=-1)
        return scores


class HFSampler:
    """Batched sampling with `model.generate`: left padding, n samples per prompt, seeded."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_batch_size: int = 64,
        own_weights: bool = False,
        share_prefix: bool = True,
    ) -> None:
        """own_weights: `model` is this sampler's own copy; `sync_weights` copies the learner's
        (gathered from its FSDP2 shards) into it instead of taking the learner's module.
        share_prefix: prefill a prefix shared by several rows once (off: every row in full)."""
        self.model, self.own_weights, self.share_prefix = model, own_weights, share_prefix
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Shared module: take it (nothing to copy). Own copy: every weight streamed in, one gathered
        parameter at a time (a collective per parameter under FSDP2: every rank calls this)."""
        if not self.own_weights:
            self.model = model
            return
        mine = dict(self.model.named_parameters())
        names = set()
        with torch.no_grad():
            for name, t in whole_weights(model):
                mine[name].copy_(t)
                names.add(name)
        if names != set(mine):
            raise RuntimeError(f"sync_weights: the learner lacks {sorted(set(mine) - names)[:5]}")

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        flat = [p for p in prompts for _ in range(params.n)]
        if any(len(p) == 0 for p in flat):
            raise ValueError("every prompt needs at least one token")
        # Sharing: sorted ids put each family of prompts side by side. Otherwise similar lengths
        # share a batch: less left padding, less wasted compute.
        order = sorted(
            range(len(flat)), key=(lambda i: flat[i]) if self.share_prefix else (lambda i: len(flat[i]))
        )
        out: list[Completion | None] = [None] * len(flat)
        device = next(self.model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(order), self.max_batch_size):
                idx = order[start : start + self.max_batch_size]
                for i, c in zip(idx, self._generate_batch([flat[i] for i in idx], params, device)):
                    out[i] = c
        return [out[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids and attention mask, every row ending at the last column."""
        width = max(len(p) for p in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for row, p in enumerate(rows):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[row, width - len(p) :] = 1
        return ids, attn

    def _prefix_cache(
        self, batch: list[list[int]], device
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None]:
        """Inputs for `generate`, and the KV cache of their shared prefixes (None: nothing shared).

        Each row is [its run's prefix, left-padded] + [the rest of its prompt, left-padded]: the
        padding in the middle is masked, and positions follow the mask (`generate` counts them with
        a cumsum), so every real token sits where it would in the row alone.
        """
        runs = shared_prefix_runs(batch) if self.share_prefix and len(batch) > 1 else []
        if len(runs) in (0, len(batch)):  # no run holds two rows: plain left padding
            ids, attn = self._left_padded(batch)
            return ids, attn, None
        heads, rest = self._left_padded([batch[a][:n] for a, _, n in runs])
        tails = [p[n:] for a, b, n in runs for p in batch[a:b]]
        t_ids, t_attn = self._left_padded(tails)
        which = torch.tensor([k for k, (a, b, _) in enumerate(runs) for _ in range(a, b)])
        cache = DynamicCache(config=self.model.config)
        positions = (rest.cumsum(-1) - 1).clamp(min=0)
        self.model(
            input_ids=heads.to(device), attention_mask=rest.to(device), position_ids=positions.to(device),
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        cache.reorder_cache(which.to(device))  # run k's prefix for each of its rows
        return torch.cat([heads[which], t_ids], 1), torch.cat([rest[which], t_attn], 1), cache

    @torch.no_grad()
    def _generate_batch(self, batch: list[list[int]], params: SamplingParams, device) -> list[Completion]:
        stop_ids = self.eos_ids + [t for t in params.stop_token_ids if t not in self.eos_ids]
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_id,
        )
        was_training = self.model.training
        self.model.eval()  # no dropout, in the prefix's prefill too
        try:
            ids, attn, cache = self._prefix_cache(batch, device)
            width = ids.shape[1]
            recorder = _LogprobRecorder(params.temperature, width)
            seqs = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                past_key_values=cache,
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder]),
            )
        finally:
            self.model.train(was_training)
        gen = seqs[:, width:]
        recorder.flush(gen[:, -1])
        logprobs = (
            torch.stack(recorder.logprobs, 1).cpu() if recorder.logprobs else torch.zeros(len(batch), 0)
        )
        return [
            self._completion(row.tolist(), lp.tolist(), stop_ids, params)
            for row, lp in zip(gen.cpu(), logprobs)
        ]

    def _completion(
        self, tokens: list[int], logprobs: list[float], stop_ids: list[int], params
    ) -> Completion:
        end = next((i + 1 for i, t in enumerate(tokens) if t in stop_ids), None)
        finish = "stop" if end is not None else "length"
        end = end if end is not None else len(tokens)
        tokens, logprobs = tokens[:end], logprobs[:end]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(text=text, token_ids=tokens, logprobs=logprobs, finish_reason=finish)
