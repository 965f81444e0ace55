"""Every per-step metric in one table: key, meaning, unit, and how it is reduced.

`ranks`: how the values of the data-parallel ranks combine into the logged one (sum: counts; mean:
rates and averages over equal shares; max; rank0: measured or decided on rank 0 alone). `within`:
how one rank's value is formed within the step (over groups, micro-batches, μ updates). The
rollout, the learner, the trainer's loop, the logger and the report read this table; a key that
is not here is a bug (`MetricsLogger.log` refuses it). No torch imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["METRICS", "PHASES", "Metric", "check_keys", "no_update", "reduce_over_ranks", "rollout_keys"]


@dataclass(frozen=True)
class Metric:
    key: str
    meaning: str
    unit: str
    source: Literal["rollout", "verify", "learner", "correction", "loop", "eval"]
    ranks: Literal["sum", "mean", "max", "rank0"]
    within: str
    zero: Any = 0.0
    """The value of a step without an update (learner keys that every step logs)."""
    report: bool = False
    """Shown on report.md's "Last step" line."""


def _learner(key: str, meaning: str, unit: str, within: str, **kw: Any) -> Metric:
    """A learner metric: all-reduced inside the learner, so every rank holds the step's value."""
    return Metric(key, meaning, unit, "learner", "rank0", within, **kw)


# Where a step's time goes (r3fast.phases): name -> (what it covers, what its tokens count).
PHASES: dict[str, tuple[str, str]] = {
    "mine": ("online mining: first attempts and their verification", "answer tokens generated"),
    "reflect": ("reflection generation", "reflection tokens generated"),
    "retry": ("retry generation", "retry tokens generated"),
    "verify": ("verifying the retries", "verify calls"),
    "pack": ("episodes to packed rows", "tokens packed"),
    "reference": ("reference log-probs (β > 0)", "tokens through the reference"),
    "old_logprobs": ("old-policy log-probs (μ > 1 or an IS correction)", "tokens through the model"),
    "forward_backward": ("span loss forward + backward, every μ update", "tokens through the model"),
    "optimizer": ("gradient all-reduce of the norm, clip, optimiser step", "—"),
    "sync": ("weight sync to the sampler", "—"),
    "eval": ("periodic held-out evaluation (eval.every)", "—"),
    "checkpoint": ("the checkpoint written after the previous step", "—"),
}


def _phases() -> tuple[Metric, ...]:
    out = []
    for name, (covers, tokens) in PHASES.items():
        out.append(Metric(f"phase_{name}_s", f"phase {name}: {covers}", "s", "loop", "rank0", "wall clock"))
        out.append(Metric(f"phase_{name}_tokens", f"phase {name}: {tokens}", "count", "loop", "rank0",
                          "per step", zero=0))  # fmt: skip
    return tuple(out)


_TABLE = (
    # rollout: one rank's groups of the step
    Metric("reward_mean", "mean reward of the reflections (retry right after it)", "fraction", "rollout",
           "mean", "over every reflection of the step", report=True),
    Metric("retry_success", "retries right after a reflection", "fraction", "rollout", "mean",
           "over every reflection of the step"),
    Metric("groups", "groups rolled out (failures × 1)", "count", "rollout", "sum", "per step"),
    Metric("groups_with_signal", "groups whose rewards differ (the learner sees only these)", "count",
           "rollout", "sum", "per step"),
    Metric("frac_groups_with_signal", "groups_with_signal / groups", "fraction", "rollout", "mean",
           "per step", report=True),
    Metric("groups_all_equal_dropped", "groups with equal rewards, dropped before the learner", "count",
           "rollout", "sum", "per step"),
    Metric("reflection_len_mean", "reflection length", "tokens", "rollout", "mean",
           "over every reflection of the step", report=True),
    Metric("reflection_truncated_frac", "reflections cut at sampler.max_reflection_tokens", "fraction",
           "rollout", "mean", "over every reflection of the step"),
    Metric("verify_invalid", "a user's verify returned a non-bool (scored as a failure)", "count",
           "verify", "sum", "calls during the step"),
    Metric("verify_timeouts", "a user's verify exceeded task.verify_timeout (a failure)", "count",
           "verify", "sum", "calls during the step"),
    # learner: every step logs these (a step without an update: their `zero`)
    _learner("loss", "the span loss of the step's last update", "nats",
             "sum of micro-batch losses (each normalised step-wide)", report=True),
    _learner("kl", "k3 KL to the reference per span token", "nats/token",
             "span-token mean over micro-batches, last update", report=True),
    _learner("clip_frac", "span tokens whose ratio was clipped", "fraction",
             "span-token mean over micro-batches, last update"),
    _learner("entropy", "policy entropy per span token", "nats/token",
             "span-token mean over micro-batches, last update"),
    _learner("grad_norm", "global gradient norm before clipping", "L2", "last update"),
    _learner("tokens", "tokens in the packed rows (all ranks)", "tokens", "per update", zero=0),
    _learner("span_tokens", "reflection tokens with a loss (all ranks)", "tokens", "per update", zero=0),
    _learner("rows", "packed rows (micro-batches), all ranks", "count", "per update", zero=0),
    _learner("attention_backend", "the packed-attention backend the forward used", "name",
             "last micro-batch", zero=""),
    _learner("skipped_nonfinite", "every update of the step was skipped (non-finite loss or grad)",
             "bool", "all μ updates", zero=False),
    _learner("updates", "optimiser updates applied (μ minus those skipped)", "count", "over the μ updates",
             zero=0),
    # correction: the sampler/learner mismatch (only when old log-probs are computed)
    Metric("sampler_gap_mean", "|old − sampler| log-prob per span token", "nats", "correction", "rank0",
           "span-token mean over rows"),
    Metric("sampler_gap_max", "largest |old − sampler| log-prob gap", "nats", "correction", "rank0",
           "max over rows"),
    Metric("is_capped_frac", "tokens or sequences whose ratio was truncated", "fraction", "correction",
           "rank0", "span-token mean over rows"),
    Metric("is_masked_frac", "tokens or sequences masked out by the correction", "fraction", "correction",
           "rank0", "span-token mean over rows"),
    Metric("is_masked_seq_frac", "sequences masked out (sequence_mask)", "fraction", "correction", "rank0",
           "span-token mean over rows"),
    Metric("is_ratio_mean", "mean importance weight", "ratio", "correction", "rank0",
           "span-token mean over rows"),
    # the loop
    Metric("lr", "learning rate of the step", "1", "loop", "rank0", "per step"),
    Metric("rollout_s", "mining + reflections + retries", "s", "loop", "rank0", "wall clock"),
    Metric("learner_s", "packing + μ updates", "s", "loop", "rank0", "wall clock"),
    Metric("sync_s", "weight sync to the sampler", "s", "loop", "rank0", "wall clock"),
    Metric("step_s", "the whole step", "s", "loop", "rank0", "wall clock"),
    Metric("tokens_per_s", "tokens / learner_s", "tokens/s", "loop", "rank0", "per step", report=True),
    Metric("peak_memory_mb", "peak CUDA memory reserved (0 on CPU)", "MiB", "loop", "rank0", "per step"),
    Metric("updated", "the weights changed this step", "bool", "loop", "rank0", "per step"),
    Metric("eval_first_try", "held-out 1st-try accuracy (eval.every)", "fraction", "eval",
           "rank0", "the fixed periodic set"),
    Metric("eval_second_try", "held-out accuracy after one reflection (eval.every)", "fraction",
           "eval", "rank0", "the fixed periodic set"),
    *_phases(),
)  # fmt: skip
METRICS: dict[str, Metric] = {m.key: m for m in _TABLE}


def no_update() -> dict[str, Any]:
    """The learner's metrics of a step without an update (no group with a signal on any rank)."""
    return {m.key: m.zero for m in _TABLE if m.source == "learner"}


def rollout_keys() -> list[str]:
    """The keys each rank measures on its own share (reduced over ranks by the loop)."""
    return [m.key for m in _TABLE if m.source in ("rollout", "verify")]


def reduce_over_ranks(local: dict[str, float], sum_fn, world: int) -> dict[str, float]:
    """One rank's rollout metrics -> the step's, by each key's `ranks` rule: `sum_fn(values)` sums
    over ranks (an all-reduce); counts stay summed ints, means average the ranks' equal shares."""
    keys = [k for k in rollout_keys() if k in local]
    total = dict(zip(keys, sum_fn([float(local[k]) for k in keys])))
    return {**local, **{k: int(v) if METRICS[k].ranks == "sum" else v / world for k, v in total.items()}}


def check_keys(metrics: dict[str, Any]) -> None:
    """A metric the schema does not define is a bug: name it."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise KeyError(f"metric(s) {unknown} are not in r3fast.metric_schema.METRICS: add them there")
