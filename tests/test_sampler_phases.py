"""One owner of the sampler's memory phases: the trainer wakes it before a rollout, sleeps it after,
and syncs the new weights; the sampler never changes phase inside `generate`."""

from __future__ import annotations

import torch

from r3fast.sampling import HFSampler, SamplingParams
from tests.test_trainer import make_trainer, tiny_config


class RecordingSampler(HFSampler):
    """A real HFSampler that logs each protocol call, and any wake/sleep made while generating."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self._generating = False

    def generate(self, prompts: list[list[int]], params: SamplingParams):
        self.calls.append("generate")
        self._generating = True
        try:
            return super().generate(prompts, params)
        finally:
            self._generating = False

    def wake(self) -> None:
        self.calls.append("wake inside generate" if self._generating else "wake")
        super().wake()

    def sleep(self) -> None:
        self.calls.append("sleep inside generate" if self._generating else "sleep")
        super().sleep()

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.calls.append("sync_weights")
        super().sync_weights(model)


def test_train_step_wakes_generates_sleeps_then_syncs(tmp_path, smol_tokenizer):
    trainer = make_trainer(tiny_config(tmp_path, **{"eval.n": 0}), smol_tokenizer)
    trainer.sampler = recorder = RecordingSampler(trainer.model, smol_tokenizer)

    trainer.train_step()

    calls = recorder.calls
    assert calls[0] == "wake" and calls[-2:] == ["sleep", "sync_weights"], calls
    generates = calls[1:-2]
    # online mining (>= 1 call), then reflections and retries (>= 1 call each), with no phase change
    assert len(generates) >= 3 and set(generates) == {"generate"}, calls
