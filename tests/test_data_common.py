"""Shared helpers for the r3fast.data tests: tiny random-init models and random R3-like sequences.

(Named test_data_* so it sits with the data tests; its one test checks the helpers themselves.)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from r3fast.data import IGNORE_INDEX, TrainSequence

VOCAB = 500


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core box, tiny-model ops run ~100x slower with 2 spinning threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny_model(arch: str, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A 2-layer GQA decoder (4 query heads, 2 kv heads), fp32, eval mode, random init."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        attn_implementation=attn,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    elif arch == "qwen3":  # per-head q/k RMSNorm
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, use_sliding_window=False))
    else:
        raise ValueError(arch)
    return model.float().eval()


def random_groups(
    rng: random.Random, n_groups: int, g: int, prefix: tuple[int, int], refl: tuple[int, int], tail: int = 0
) -> list[TrainSequence]:
    """n_groups groups of g sequences sharing a random prefix; `tail` extra tokens after the span."""
    seqs = []
    for gid in range(n_groups):
        pre = [rng.randrange(VOCAB) for _ in range(rng.randint(*prefix))]
        for _ in range(g):
            r = [rng.randrange(VOCAB) for _ in range(rng.randint(*refl))]
            t = [rng.randrange(VOCAB) for _ in range(tail)]
            seqs.append(
                TrainSequence(
                    input_ids=pre + r + t,
                    span_start=len(pre),
                    span_end=len(pre) + len(r),
                    advantage=rng.uniform(-2, 2),
                    group_id=gid,
                    sampler_logp=[-rng.random() for _ in r],
                )
            )
    return seqs


def token_logp(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) [T] from hidden [T, H] via the lm_head (0 where target is IGNORE_INDEX)."""
    w = model.get_output_embeddings().weight  # [V, H]
    dt = torch.promote_types(hidden.dtype, torch.float32)  # at least fp32; fp64 models stay fp64
    logp = torch.log_softmax(hidden.to(dt) @ w.to(dt).T, dim=-1)  # [T, V]
    safe = targets.clamp_min(0)
    return torch.where(targets == IGNORE_INDEX, 0.0, logp.gather(-1, safe[:, None])[:, 0])


def unpacked_logp(model: torch.nn.Module, seq: TrainSequence) -> torch.Tensor:
    """Reference: the sequence alone, no packing, plain causal attention. [L] (last = 0)."""
    ids = torch.tensor(seq.input_ids)[None]
    h = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]
    tgt = torch.tensor(seq.input_ids[1:] + [IGNORE_INDEX])
    return token_logp(model, h, tgt)


def test_helpers_build_consistent_sequences() -> None:
    seqs = random_groups(random.Random(0), 3, 4, (5, 9), (2, 6), tail=2)
    assert len(seqs) == 12
    for s in seqs:
        assert s.span_end == len(s.input_ids) - 2 and len(s.sampler_logp) == s.span_len
    assert seqs[0].input_ids[: seqs[0].span_start] == seqs[3].input_ids[: seqs[3].span_start]
