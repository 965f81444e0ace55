"""VLLMSampler's CUDA-only behaviour: sleep/wake really free and restore memory, "auto" sizing.

Needs the CUDA vLLM wheel and a GPU; skipped otherwise. One engine for the module (a second
sleep-mode engine in one process is not something vLLM supports well).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="needs vllm")

from r3fast.models import load_model  # noqa: E402
from r3fast.sampling import memory  # noqa: E402
from r3fast.sampling.base import SamplingParams  # noqa: E402
from r3fast.sampling.vllm_sampler import VLLMSampler  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.cuda, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def learner():
    model, tok = load_model(MODEL, dtype=torch.bfloat16, device="cuda")
    ids = torch.tensor(
        [tok("a warm-up step so that the learner's peak is measured")["input_ids"]], device="cuda"
    )
    model(ids, labels=ids).loss.backward()  # the peak "auto" sizes against
    model.zero_grad(set_to_none=True)
    return model, tok


@pytest.fixture(scope="module")
def sampler(learner):
    return VLLMSampler(MODEL, dtype="bfloat16", max_model_len=2048, sleep_level=1)


def _free() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def test_auto_utilization_follows_learner_peak(sampler):
    total = torch.cuda.get_device_properties(0).total_memory
    expected = (total - torch.cuda.max_memory_reserved() - memory.DEFAULT_MARGIN_BYTES) / total
    assert sampler.sleep_enabled
    assert abs(sampler.gpu_memory_utilization - expected) < 0.01  # reserved may grow a little meanwhile


def test_sleep_frees_wake_restores_and_generate_never_switches(sampler, learner):
    _, tok = learner
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True)[
        "input_ids"
    ]
    asleep = _free()  # the constructor leaves the engine asleep
    sampler.wake()
    awake = _free()
    assert (
        asleep - awake
        > 0.5 * sampler.gpu_memory_utilization * torch.cuda.get_device_properties(0).total_memory
    )
    out = sampler.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))
    assert out[0][0].token_ids
    assert _free() <= awake + 256 * (1 << 20)  # generate did not put the engine to sleep
    sampler.sleep()
    assert _free() >= asleep - 256 * (1 << 20)
    with pytest.raises(RuntimeError, match="call wake"):  # nor does it wake it: the caller owns that
        sampler.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))


def test_level2_needs_a_sync(sampler, learner):
    model, tok = learner
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True)[
        "input_ids"
    ]
    sampler.wake()
    ref = sampler.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))[0][0]
    sampler.sleep_level = 2
    try:
        sampler.sleep()
        sampler.wake()
        with pytest.raises(RuntimeError, match="sync_weights"):
            sampler.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))
        sampler.sync_weights(model)  # leaves the engine awake
        again = sampler.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))[0][0]
        assert again.token_ids == ref.token_ids
    finally:
        sampler.sleep_level = 1
