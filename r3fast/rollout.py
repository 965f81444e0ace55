"""R3 episodes: failure -> G reflections -> G retries -> binary rewards -> group advantages.

Only the reflection is trained: each episode becomes `reflect-prompt ids + reflection ids`,
built from the sampler's own ids so the reflection span is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .data import TrainSequence
from .failure_file import Failure
from .generation import generate_chunked
from .phases import phase
from .prompts import REFLECT_PROMPT, reflect_messages, render, retry_messages
from .sampling import Completion, Sampler, SamplingParams

__all__ = [
    "Group",
    "RolloutResult",
    "group_advantages",
    "reflect_and_retry",
    "rollout",
    "scaled_advantages",
    "to_sequences",
]


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


SCALE_REWARDS = ("group", "batch", "none")


def _std(xs: list[float]) -> float:
    """Unbiased standard deviation (TRL's nanstd); 0 for fewer than two values."""
    n = len(xs)
    mean = sum(xs) / max(n, 1)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0


def group_advantages(rewards: list[float], eps: float = 1e-4, std: float | None = None) -> list[float]:
    """A_i = (r_i - mean) / (std + eps), std unbiased as in TRL (the group's unless given); a
    1-sample group has std 0."""
    mean = sum(rewards) / len(rewards)
    std = _std(rewards) if std is None else std
    return [(r - mean) / (std + eps) for r in rewards]


def scaled_advantages(
    rewards: list[list[float]], scale: str = "group", eps: float = 1e-4
) -> list[list[float]]:
    """Advantages of every group (TRL's scale_rewards): the group mean is always subtracted, then
    group: / (the group's std + eps) (the paper's); batch: / (the std of every reward of the step + eps);
    none: unscaled (Dr. GRPO)."""
    if scale == "group":
        return [group_advantages(g, eps) for g in rewards]
    if scale == "batch":
        std = _std([r for g in rewards for r in g])
        return [group_advantages(g, eps, std=std) for g in rewards]
    if scale == "none":
        return [[r - sum(g) / len(g) for r in g] for g in rewards]
    raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {scale!r}")


def reflect_and_retry(
    sampler: Sampler,
    tokenizer,
    task_msgs: list[list[dict]],
    attempts: list[str],
    *,
    n: int,
    reflection_params: SamplingParams,
    answer_params: SamplingParams,
    chunk_size: int = 64,
    progress: bool = True,
    reflect_prompt: str = REFLECT_PROMPT,
) -> tuple[list[list[int]], list[list[Completion]], list[list[str]]]:
    """For each failed attempt: `n` reflections, then one retry after each.

    Returns (reflect-prompt ids, the n reflections, the n retry texts), one entry per attempt.
    """
    prompts = [render(tokenizer, reflect_messages(m, a, reflect_prompt)) for m, a in zip(task_msgs, attempts)]
    with phase("reflect") as p:
        refl = generate_chunked(
            sampler, prompts, reflection_params, n=n, chunk_size=chunk_size, desc="reflect", progress=progress
        )
        p.tokens += sum(len(c.token_ids) for group in refl for c in group)
    retry_prompts = [
        render(tokenizer, retry_messages(m, a, c.text, reflect_prompt))
        for m, a, group in zip(task_msgs, attempts, refl)
        for c in group
    ]
    with phase("retry") as p:
        flat = generate_chunked(
            sampler, retry_prompts, answer_params, n=1, chunk_size=chunk_size, desc="retry", progress=progress
        )
        p.tokens += sum(len(r[0].token_ids) for r in flat)
    retries = [[r[0].text for r in flat[i * n : (i + 1) * n]] for i in range(len(attempts))]
    return prompts, refl, retries


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
    reflect_prompt: str = REFLECT_PROMPT,
    scale_rewards: str = "group",
) -> RolloutResult:
    """Sample `group_size` reflections per failure, retry once after each, verify, score.
    scale_rewards: group | batch | none (see `scaled_advantages`; batch: this call's rewards)."""
    prompts, refl, retries = reflect_and_retry(
        sampler,
        tokenizer,
        [task.build_prompt(f.example) for f in failures],
        [f.attempt for f in failures],
        n=group_size,
        reflection_params=reflection_params,
        answer_params=answer_params,
        chunk_size=chunk_size,
        progress=progress,
        reflect_prompt=reflect_prompt,
    )
    with phase("verify") as p:
        rewards = [[1.0 if task.verify(f.example, t) else 0.0 for t in ts]
                   for f, ts in zip(failures, retries)]  # fmt: skip
        p.tokens += sum(map(len, rewards))
    advantages = scaled_advantages(rewards, scale_rewards)
    groups = [
        Group(failure=f, prompt_ids=p, reflections=group, retries=texts, rewards=r, advantages=a)
        for f, p, group, texts, r, a in zip(failures, prompts, refl, retries, rewards, advantages)
    ]
    return RolloutResult(groups=groups)


def to_sequences(groups: list[Group], *, mask_truncated: bool = False) -> list[TrainSequence]:
    """`prompt + reflection` per episode; the span is exactly the sampled reflection ids.
    mask_truncated: reflections cut at the length cap get no loss (TRL's mask_truncated_completions;
    they still count in their group's advantages)."""
    seqs = []
    for gid, g in enumerate(groups):
        for c, adv in zip(g.reflections, g.advantages):
            if not c.token_ids or (mask_truncated and c.finish_reason == "length"):
                continue  # nothing sampled (or cut off): nothing to train
            seqs.append(
                TrainSequence.from_parts(
                    g.prompt_ids, c.token_ids, adv, group_id=gid, sampler_logp=list(c.logprobs)
                )
            )
    return seqs
