"""R3 episodes: failure -> G reflections -> G retries -> binary rewards -> group advantages.

Only the reflection is trained: each episode becomes `reflect-prompt ids + reflection ids`,
built from the sampler's own ids so the reflection span is exact.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .data import TrainSequence
from .generation import generate_chunked
from .prompts import reflect_messages, render, retry_messages
from .sampling import Completion, Sampler, SamplingParams

__all__ = ["Failure", "Group", "RolloutResult", "group_advantages", "rollout", "to_sequences"]


@dataclass(kw_only=True)
class Failure:
    example: dict
    attempt: str
    """The failed first answer, as text (it re-enters the conversation as an assistant turn)."""


@dataclass(kw_only=True)
class Group:
    failure: Failure
    prompt_ids: list[int]
    """Rendered conversation up to the reflection: task, failed answer, reflection request."""
    reflections: list[Completion]
    retries: list[str]
    rewards: list[float]
    advantages: list[float]

    @property
    def has_signal(self) -> bool:
        return len(set(self.rewards)) > 1


@dataclass(kw_only=True)
class RolloutResult:
    groups: list[Group]
    """Every group, with or without signal (for metrics)."""

    @property
    def kept(self) -> list[Group]:
        """Groups whose rewards differ: the only ones that carry a gradient."""
        return [g for g in self.groups if g.has_signal]

    def metrics(self) -> dict[str, float]:
        rewards = [r for g in self.groups for r in g.rewards]
        lengths = [len(c.token_ids) for g in self.groups for c in g.reflections]
        n = max(len(self.groups), 1)
        return {
            "reward_mean": sum(rewards) / max(len(rewards), 1),
            "retry_success": sum(r > 0 for r in rewards) / max(len(rewards), 1),
            "groups": len(self.groups),
            "groups_with_signal": len(self.kept),
            "frac_groups_with_signal": len(self.kept) / n,
            "groups_all_equal_dropped": len(self.groups) - len(self.kept),
            "reflection_len_mean": sum(lengths) / max(len(lengths), 1),
            "reflection_truncated_frac": sum(
                c.finish_reason == "length" for g in self.groups for c in g.reflections
            )
            / max(len(lengths), 1),
        }


def group_advantages(rewards: list[float], eps: float = 1e-4) -> list[float]:
    """A_i = (r_i - mean) / (std + eps), std unbiased as in TRL; a 1-sample group has std 0."""
    n = len(rewards)
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1)) if n > 1 else 0.0
    return [(r - mean) / (std + eps) for r in rewards]


def rollout(
    sampler: Sampler,
    tokenizer,
    task,
    failures: list[Failure],
    *,
    group_size: int,
    reflection_params: SamplingParams,
    answer_params: SamplingParams,
    chunk_size: int = 64,
    progress: bool = True,
) -> RolloutResult:
    """Sample `group_size` reflections per failure, retry once after each, verify, score."""
    task_msgs = [task.build_prompt(f.example) for f in failures]
    prompts = [render(tokenizer, reflect_messages(m, f.attempt)) for m, f in zip(task_msgs, failures)]
    refl = generate_chunked(
        sampler,
        prompts,
        dataclasses.replace(reflection_params, n=group_size),
        chunk_size=max(1, chunk_size // group_size),
        desc="reflect",
        progress=progress,
    )
    retry_prompts = [
        render(tokenizer, retry_messages(m, f.attempt, c.text))
        for m, f, group in zip(task_msgs, failures, refl)
        for c in group
    ]
    retries = generate_chunked(
        sampler,
        retry_prompts,
        dataclasses.replace(answer_params, n=1),
        chunk_size=chunk_size,
        desc="retry",
        progress=progress,
    )
    groups = []
    for i, (f, p, group) in enumerate(zip(failures, prompts, refl)):
        texts = [r[0].text for r in retries[i * group_size : (i + 1) * group_size]]
        rewards = [1.0 if task.verify(f.example, t) else 0.0 for t in texts]
        groups.append(
            Group(
                failure=f,
                prompt_ids=p,
                reflections=group,
                retries=texts,
                rewards=rewards,
                advantages=group_advantages(rewards),
            )
        )
    return RolloutResult(groups=groups)


def to_sequences(groups: list[Group]) -> list[TrainSequence]:
    """`prompt + reflection` per episode; the span is exactly the sampled reflection ids."""
    seqs = []
    for gid, g in enumerate(groups):
        for c, adv in zip(g.reflections, g.advantages):
            if not c.token_ids:
                continue  # nothing sampled, nothing to train
            seqs.append(
                TrainSequence.from_parts(
                    g.prompt_ids, c.token_ids, adv, group_id=gid, old_logp=list(c.logprobs)
                )
            )
    return seqs
