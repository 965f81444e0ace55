"""The learner's half of a step: packed rows -> old log-probs and mismatch correction -> μ updates.

    ref_t   = log π_ref(y_t)                    (frozen reference, β > 0 only)
    old_t   = log π_θold(y_t)                   (the learner before its first update; only when μ > 1
                                                 or a correction is asked: otherwise ratio ≡ 1)
    w_t     = min(e^(old_t − samp_t), c)        token_tis: truncated importance weight on the surrogate
    w_s     = 1[e^Σ(old − samp) ∈ [1/c, c]]     sequence_mis: sequences far off-policy are dropped
    μ times: loss = Σ_rows span_grpo_loss(rows; old, ref, w) -> backward -> clip -> AdamW step

samp_t is the sampler's own log-prob of each reflection token (vLLM: bf16 kernels, other numerics):
the gap |old − samp| is logged, since it is the first thing to look at when a run diverges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import PackedBatch, StepPlan, TrainSequence, pack_sequences, plan_step
from .guard import NonFiniteGuard
from .lora import reference_off
from .loss import SpanLoss

__all__ = ["Learner", "correction_weights"]

Tensor = torch.Tensor


def correction_weights(
    old: Tensor, sampler: Tensor, seq: Tensor, mode: str, cap: float
) -> tuple[Tensor | None, dict[str, float]]:
    """Importance weights [M] (None for mode "none") and their metrics, from the learner's old
    log-probs, the sampler's, and each token's sequence id (all [M])."""
    gap = (old - sampler).float()
    stats = {"sampler_gap_mean": float(gap.abs().mean()) if gap.numel() else 0.0,  # host-device sync
             "sampler_gap_max": float(gap.abs().max()) if gap.numel() else 0.0}  # fmt: skip
    if mode == "none":
        return None, stats
    if mode == "token_tis":
        ratio = torch.exp(gap)
        stats["is_capped_frac"] = float((ratio > cap).float().mean()) if gap.numel() else 0.0
        return ratio.clamp(max=cap), stats
    if mode == "sequence_mis":
        ids, inv = torch.unique(seq, return_inverse=True)
        log_ratio = torch.zeros(ids.numel(), device=gap.device).index_add_(0, inv, gap)  # Σ_t per sequence
        keep = (log_ratio.abs() <= torch.log(torch.tensor(cap))).float()  # ratio in [1/c, c]
        stats["is_masked_seq_frac"] = float(1 - keep.mean()) if ids.numel() else 0.0
        return keep[inv], stats
    raise ValueError(f"is_correction must be none, token_tis or sequence_mis, got {mode!r}")


@dataclass
class Learner:
    model: torch.nn.Module
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
    is_cap: float = 3.0
    ref_adapters_off: bool = False
    """LoRA: the reference is the policy itself with its adapters disabled (no second copy)."""

    def ref_logprobs(self, row: PackedBatch) -> Tensor | None:
        """[M] reference log-probs of the row's span tokens, or None when there is no KL term."""
        if self.ref_model is not None:
            return self.loss.logprobs(self.ref_model, row)
        if self.ref_adapters_off:
            with reference_off(self.model):
                return self.loss.logprobs(self.model, row)
        return None

    def step(self, plan: StepPlan, rows: list[PackedBatch], *, label: str = "step") -> dict:
        """μ optimiser updates over one step's rows; metrics of the last update (+ correction)."""
        rows = [r.to(self.device) for r in rows]
        self.model.train()
        ref = [self.ref_logprobs(r) for r in rows]
        need_old = self.num_iterations > 1 or self.is_correction != "none"
        old = [self.loss.logprobs(self.model, r) if need_old else None for r in rows]
        weights, stats = self._correct(rows, old)
        skipped = 0
        for _ in range(self.num_iterations):
            metrics = self._update(plan, rows, ref, old, weights)
            skipped += metrics["skipped_nonfinite"]
            if not metrics["skipped_nonfinite"]:
                self.guard.check_weights(self.model, label)
        metrics.update(stats, updates=self.num_iterations - skipped)
        metrics["skipped_nonfinite"] = skipped == self.num_iterations
        return metrics

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
        out, _ = self.loss(self.model, row, plan_step([seq]))
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
            raise ValueError("loss.is_correction needs the sampler's log-probs on every sequence")
        out, per_row = [], []
        for r, o in zip(rows, old, strict=True):
            w, stats = correction_weights(o, r.sampler_logp, r.seq_index[r.span_mask], self.is_correction,
                                          self.is_cap)  # fmt: skip
            out.append(w)
            per_row.append((int(r.span_mask.sum()), stats))
        total = max(1, sum(m for m, _ in per_row))
        merged = {k: sum(m * s[k] for m, s in per_row) / total for k in per_row[0][1]}
        merged["sampler_gap_max"] = max(s["sampler_gap_max"] for _, s in per_row)
        return out, merged

    def _update(self, plan: StepPlan, rows: list[PackedBatch], ref: list, old: list, weights: list) -> dict:
        """One optimiser step over every row (one micro-batch each), guarded against non-finite values."""
        totals = {"loss": 0.0, "kl": 0.0, "clip": 0.0, "entropy": 0.0, "span": 0, "tokens": 0}
        scale, backend = self.loss.micro_batch_scale(len(rows)), ""
        for row, r, o, w in zip(rows, ref, old, weights, strict=True):
            out, backend = self.loss(self.model, row, plan, ref_logp=r, old_logp=o, is_weights=w)
            (out.loss * scale).backward()
            m = int(row.span_mask.sum())  # host-device sync, once per row
            totals["loss"] += float(out.loss.detach()) * scale
            totals["kl"] += float(out.kl.sum())
            totals["clip"] += float(out.clip_frac) * m
            totals["entropy"] += float(out.entropy.sum())
            totals["span"] += m
            totals["tokens"] += row.num_tokens
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
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
            "rows": len(rows),
            "tokens": totals["tokens"],
            "span_tokens": totals["span"],
            "attention_backend": backend,
        }
