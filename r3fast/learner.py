"""The learner's half of a step: packed rows -> old log-probs and mismatch correction -> μ updates.

    ref_t   = log π_ref(y_t)                    (frozen reference, β > 0 only)
    old_t   = log π_θold(y_t)                   (the learner before its first update; only when μ > 1
                                                 or a correction is asked: otherwise ratio ≡ 1)
    ρ       = e^(old_t − samp_t) per token, or e^Σ_t(old − samp) per sequence (TRL's four modes):
    w       = clamp(ρ, c_min, c_max) (*_truncate) or ρ·1[ρ ∈ [c_min, c_max]] (*_mask), on the policy term
    μ times: loss = Σ_rows span_grpo_loss(rows; old, ref, w) -> backward -> clip -> AdamW step

samp_t is the sampler's own log-prob of each reflection token (vLLM: bf16 kernels, other numerics):
the gap |old − samp| is logged, since it is the first thing to look at when a run diverges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import R3Config
from .config_learner import IS_ALIASES, IS_MODES
from .data import PackedBatch, StepPlan, TrainSequence, pack_sequences, plan_step
from .distributed import Dist
from .guard import NonFiniteGuard
from .lora import reference_off
from .loss import SpanLoss
from .metric_schema import no_update
from .model import full_weight, is_fsdp2
from .phases import phase

__all__ = ["IS_MODES", "NO_UPDATE", "Learner", "correction_weights"]

Tensor = torch.Tensor
# The metrics of a step without an update (no group with a reward signal on any rank): the schema's.
NO_UPDATE = no_update()




def correction_weights(
    old: Tensor, sampler: Tensor, seq: Tensor, mode: str, clip_max: float | None = 3.0,
    clip_min: float | None = None,
) -> tuple[Tensor | None, dict[str, float]]:
    """Importance weights [M] (None for mode "none") and their metrics, from the learner's old
    log-probs, the sampler's, and each token's sequence id (all [M]); TRL's modes:

        token_*     ρ_t = e^(old_t − samp_t)              sequence_*  ρ_s = e^Σ_t∈s (old_t − samp_t)
        *_truncate  w = clamp(ρ, clip_min, clip_max)     *_mask      w = 1[clip_min ≤ ρ ≤ clip_max]·ρ

    (a None bound is no bound). The old names token_tis and sequence_mis are read as token_truncate
    and sequence_mask with clip_min = 1/clip_max (its rule: sequences whose ratio leaves [1/c, c])."""
    if mode == "sequence_mis" and clip_min is None and clip_max:
        clip_min = 1.0 / clip_max
    mode = IS_ALIASES.get(mode, mode)
    if mode not in IS_MODES:
        raise ValueError(f"is_correction must be one of {', '.join(IS_MODES)}, got {mode!r}")
    gap = (old - sampler).float()
    stats = {"sampler_gap_mean": float(gap.abs().mean()) if gap.numel() else 0.0,  # host-device sync
             "sampler_gap_max": float(gap.abs().max()) if gap.numel() else 0.0}  # fmt: skip
    if mode == "none":
        return None, stats
    level, rule = mode.split("_")
    inv = None
    if level == "sequence":
        ids, inv = torch.unique(seq, return_inverse=True)
        gap = torch.zeros(ids.numel(), device=gap.device).index_add_(0, inv, gap)  # Σ_t per sequence
    ratio = torch.exp(gap)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    outside = (ratio < lo) | (ratio > hi)
    n = max(ratio.numel(), 1)
    if rule == "truncate":
        w = torch.clamp(ratio, min=clip_min, max=clip_max)
        stats["is_capped_frac"] = float(outside.sum()) / n  # of tokens or sequences
    else:
        w = ratio.masked_fill(outside, 0.0)
        stats["is_masked_frac"] = float(outside.sum()) / n
        if level == "sequence":
            stats["is_masked_seq_frac"] = stats["is_masked_frac"]
    stats["is_ratio_mean"] = float(w.mean()) if w.numel() else 0.0
    return (w if inv is None else w[inv]), stats


@dataclass
class Learner:
    model: torch.nn.Module
    """The causal LM being trained (its parameters are the optimiser's)."""
    ref_model: torch.nn.Module | None
    """The frozen KL reference; None with ref_adapters_off or β = 0."""
    loss: SpanLoss
    optimizer: torch.optim.Optimizer
    guard: NonFiniteGuard
    device: torch.device
    grad_clip: float
    """max global grad norm; 0 disables clipping."""
    num_iterations: int = 1
    is_correction: str = "none"
    """TRL's vllm_importance_sampling_mode (see `correction_weights`); old names are aliases."""
    is_cap: float | None = 3.0
    """clip_max of the correction (the old name kept: TRL's vllm_importance_sampling_clip_max)."""
    is_clip_min: float | None = None
    """clip_min of the correction (TRL's vllm_importance_sampling_clip_min)."""
    ref_adapters_off: bool = False
    """LoRA: the reference is the policy itself with its adapters disabled (no second copy)."""
    dist: Dist = field(default_factory=Dist)
    """The data-parallel group (world size 1: a single process)."""
    module: torch.nn.Module | None = None
    """What the policy's forward runs through: `dist.wrap(model)` (DDP / FSDP2), default the model."""

    def __post_init__(self) -> None:
        self.module = self.model if self.module is None else self.module

    @classmethod
    def from_config(cls, cfg: R3Config, model: torch.nn.Module, **parts) -> Learner:
        """The learner of a run: its knobs from the config (μ, the sampler correction and its bounds,
        grad clip, the LoRA reference); parts: ref_model, loss, optimizer, guard, device, dist, module."""
        lc = cfg.learner
        return cls(
            model=model,
            grad_clip=lc.grad_clip,
            num_iterations=lc.num_iterations,
            is_correction=lc.is_correction,
            is_cap=lc.is_clip_max,
            is_clip_min=lc.is_clip_min,
            ref_adapters_off=cfg.loss.beta > 0 and cfg.model.lora is not None,
            **parts,
        )

    def peak_bytes_for(self, cfg: R3Config, token_id: int) -> int:
        """`peak_bytes` of one full data.max_tokens row, with the configured optimiser's moments."""
        return self.peak_bytes(cfg.data.max_tokens, token_id, eight_bit=cfg.optim.optimizer == "adamw8bit")

    def ref_logprobs(self, row: PackedBatch) -> Tensor | None:
        """[M] reference log-probs of the row's span tokens, or None when there is no KL term."""
        if self.ref_model is not None:
            return self.loss.logprobs(self.ref_model, row)
        if self.ref_adapters_off:
            with reference_off(self.model):
                return self.loss.logprobs(self.module, row)
        return None

    def step(self, plan: StepPlan | None, rows: list[PackedBatch], *, label: str = "step") -> dict:
        """μ optimiser updates over one step's rows; metrics of the last update (+ correction).

        plan/rows are this rank's (plan None when it has no sequence). The step-wide normalisers are
        all-reduced first; when no rank has a row nothing is updated, on every rank alike."""
        plan, n_rows = self._global_plan(plan, len(rows))
        if n_rows == 0:
            return dict(NO_UPDATE)
        rows = [r.to(self.device) for r in rows]
        rows += [self._empty_row() for _ in range(self._rows_needed(len(rows)))]
        self.model.train()
        tokens = sum(r.num_tokens for r in rows)
        with phase("reference") as p:
            ref = [self.ref_logprobs(r) for r in rows]
            p.tokens += tokens if ref[0] is not None else 0
        need_old = self.num_iterations > 1 or self.is_correction != "none"
        with phase("old_logprobs") as p:
            old = [self.loss.logprobs(self.module, r) if need_old else None for r in rows]
            p.tokens += tokens if need_old else 0
        weights, stats = self._correct(rows, old)
        skipped = 0
        for _ in range(self.num_iterations):
            metrics = self._update(plan, rows, ref, old, weights, n_rows)
            skipped += metrics["skipped_nonfinite"]
            if not metrics["skipped_nonfinite"]:
                self.guard.check_weights(self.model, label)
        metrics.update(stats, updates=self.num_iterations - skipped)
        metrics["skipped_nonfinite"] = skipped == self.num_iterations
        return metrics

    def _global_plan(self, plan: StepPlan | None, n_rows: int) -> tuple[StepPlan, int]:
        """The step's normalisers over every rank: span tokens, sequences and rows summed, the longest
        span maxed (one collective each; nothing at world size 1)."""
        local = plan or StepPlan(num_span_tokens=0, num_sequences=0, max_span_len=0)
        if not self.dist.enabled:
            return local, n_rows
        tokens, seqs, rows = self.dist.sum([local.num_span_tokens, local.num_sequences, n_rows], self.device)
        (longest,) = self.dist.max([local.max_span_len], self.device)
        merged = StepPlan(num_span_tokens=int(tokens), num_sequences=int(seqs), max_span_len=int(longest))
        return merged, int(rows)

    def _rows_needed(self, n: int) -> int:
        """Empty rows this rank must add: DDP needs one backward per rank per update (its gradient
        all-reduce); FSDP2 all-gathers in every forward, so every rank runs as many rows as the most."""
        if not self.dist.enabled:
            return 0
        if is_fsdp2(self.module):
            (most,) = self.dist.max([n], self.device)
            return int(most) - n
        return 1 if n == 0 else 0

    def _empty_row(self) -> PackedBatch:
        """Two tokens, no span: a forward/backward whose loss is an exact zero."""
        seq = TrainSequence(input_ids=[0, 0], span_start=1, span_end=1, advantage=0.0, sampler_logp=[])
        return pack_sequences([seq], 2)[0].to(self.device)

    def peak_bytes(self, max_tokens: int, token_id: int, *, eight_bit: bool = False) -> int:
        """The learner's CUDA peak, measured: forward + backward of one full token-budget row
        (weights, reference model, gradients, activations), plus the optimiser's two moments, which
        are only allocated at the first step (bytes per element from the optimiser kind)."""
        seq = TrainSequence(
            input_ids=[token_id] * max_tokens, span_start=1, span_end=max_tokens, advantage=1.0
        )
        row = pack_sequences([seq], max_tokens)[0].to(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.ref_logprobs(row)
        out, _ = self.loss(self.module, row, plan_step([seq]))
        out.loss.backward()
        peak = torch.cuda.max_memory_reserved(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        per_elem = 2 if eight_bit else 2 * trainable[0].element_size()
        return peak + per_elem * sum(p.numel() for p in trainable)

    def _correct(self, rows: list[PackedBatch], old: list[Tensor | None]) -> tuple[list, dict]:
        no_sampler = any(r.sampler_logp is None for r in rows)
        if self.is_correction == "none" and (old[0] is None or no_sampler):
            return [None] * len(rows), {}  # nothing to correct, nothing to compare
        if no_sampler:
            raise ValueError("learner.is_correction needs the sampler's log-probs on every sequence")
        out, per_row = [], []
        for r, o in zip(rows, old, strict=True):
            w, stats = correction_weights(o, r.sampler_logp, r.seq_index[r.span_mask], self.is_correction,
                                          self.is_cap, self.is_clip_min)  # fmt: skip
            out.append(w)
            per_row.append((int(r.span_mask.sum()), stats))
        total = max(1, sum(m for m, _ in per_row))
        merged = {k: sum(m * s[k] for m, s in per_row) / total for k in per_row[0][1]}
        merged["sampler_gap_max"] = max(s["sampler_gap_max"] for _, s in per_row)
        return out, merged

    def _update(
        self, plan: StepPlan, rows: list[PackedBatch], ref: list, old: list, weights: list, n_rows: int
    ) -> dict:
        """One optimiser step over every row (one micro-batch each), guarded against non-finite values.
        n_rows: real rows over all ranks (bnpo averages them)."""
        totals = {"loss": 0.0, "kl": 0.0, "clip": 0.0, "entropy": 0.0, "span": 0, "tokens": 0}
        scale = self.loss.micro_batch_scale(n_rows)
        backend = ""
        with phase("forward_backward") as p:
            for i, (row, r, o, w) in enumerate(zip(rows, ref, old, weights, strict=True)):
                with self.dist.no_sync(self.module, last=i == len(rows) - 1):
                    out, backend = self.loss(self.module, row, plan, ref_logp=r, old_logp=o, is_weights=w)
                    # × world: DDP / FSDP2 average gradients over ranks; the step's loss is their sum
                    (out.loss * (scale * self.dist.world)).backward()
                m = int(row.span_mask.sum())  # host-device sync, once per row
                totals["loss"] += float(out.loss.detach()) * scale
                totals["kl"] += float(out.kl.sum())
                totals["clip"] += float(out.clip_frac) * m
                totals["entropy"] += float(out.entropy.sum())
                totals["span"] += m
                totals["tokens"] += row.num_tokens
            p.tokens += totals["tokens"]
        with phase("optimizer"):
            metrics = self._apply(totals, n_rows, backend)
        return metrics

    def _apply(self, totals: dict, n_rows: int, backend: str) -> dict:
        """The step's totals over ranks, the global-norm clip, and the guarded optimiser step."""
        keys = list(totals)
        totals = dict(zip(keys, self.dist.sum([totals[k] for k in keys], self.device)))
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.grad_clip if self.grad_clip > 0 else float("inf")
        # global: DDP grads are synced; FSDP2's norm is a DTensor over every rank's shards
        grad_norm = float(full_weight(torch.nn.utils.clip_grad_norm_(params, clip)))
        # The NaN/Inf guard: a non-finite update leaves weights and optimiser moments as they were.
        skipped = not self.guard.finite(totals["loss"], grad_norm)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        span = max(totals["span"], 1)
        return {
            "skipped_nonfinite": skipped,
            "loss": totals["loss"],
            "kl": totals["kl"] / span,
            "clip_frac": totals["clip"] / span,
            "entropy": totals["entropy"] / span,
            "grad_norm": grad_norm,
            "rows": n_rows,
            "tokens": int(totals["tokens"]),
            "span_tokens": int(totals["span"]),
            "attention_backend": backend,
        }
