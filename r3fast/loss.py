"""The GRPO span loss applied to a causal LM: hidden states from the decoder, the lm_head
weight, and the fused kernel (Triton on CUDA, chunked torch elsewhere)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .config import LossConfig, R3Config
from .data import PackedBatch, StepPlan
from .errors import UserError
from .kernels import LOSS_TYPES, ObjectiveParams, span_grpo_loss, span_logprobs
from .lora import head_weight
from .model import forward_hidden, full_weight, unwrap

__all__ = ["SpanLoss", "check_impl_device", "check_supported", "lm_head_weight"]


def check_impl_device(impl: str, device: torch.device) -> None:
    """loss.impl=triton* needs CUDA (or Triton's CPU interpreter, TRITON_INTERPRET=1, in tests)."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if impl.startswith("triton") and device.type != "cuda" and not interpreting:
        raise UserError(f"loss.impl={impl} needs a CUDA device (this run is on {device}); "
                        "use loss.impl=auto or torch")  # fmt: skip


def check_supported(model: torch.nn.Module) -> None:
    """Refuse what the kernel does not model: logit soft-capping, logit scaling, an lm_head bias."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attr in ("final_logit_softcapping", "logit_softcapping"):
        if getattr(cfg, attr, None):
            raise NotImplementedError(
                f"{type(model).__name__} uses {attr}={getattr(cfg, attr)}; the span loss does not"
            )
    for attr in ("logit_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} scales logits ({attr}); the span loss does not"
            )
    head = model.get_output_embeddings()
    head = head.get_base_layer() if hasattr(head, "get_base_layer") else head  # a LoRA-wrapped head
    if head is None or getattr(head, "bias", None) is not None:
        raise NotImplementedError("the span loss needs an lm_head without bias")


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """[V, H]; with tied embeddings this is the input embedding itself (gradients add up); with a
    LoRA head the merged weight, differentiable to the adapter."""
    return head_weight(model)


@dataclass
class SpanLoss:
    cfg: LossConfig
    temperature: float
    """The sampling temperature: log-probs are taken under the distribution that was sampled."""
    max_span_tokens: int
    """dr_grpo's constant per-sequence length (TRL: max_completion_length)."""
    compute_dtype: torch.dtype = torch.float32
    """bfloat16: mixed precision (model.compute_dtype). The forward runs under autocast and the span
    kernel gets bf16 hidden states and a bf16 view of the head weight (its gradient flows back to the
    fp32 master); per-token terms and reductions stay fp32 inside the kernel."""

    @classmethod
    def from_config(cls, cfg: R3Config) -> SpanLoss:
        """[loss], with τ = the sampling temperature and dr_grpo's length = the reflection cap."""
        s = cfg.sampler
        return cls(cfg.loss, temperature=s.temperature, max_span_tokens=s.max_reflection_tokens,
                   compute_dtype=getattr(torch, cfg.model.compute_dtype))  # fmt: skip

    def _hidden_and_head(self, model: torch.nn.Module, batch: PackedBatch):
        """(hidden [T, H], head weight [V, H], attention backend) in the compute dtype."""
        mixed = self.compute_dtype != torch.float32
        device = batch.input_ids.device.type
        with torch.autocast(device, dtype=self.compute_dtype, enabled=mixed):
            hidden, backend = forward_hidden(model, batch)
        weight = full_weight(lm_head_weight(unwrap(model)))  # FSDP2: the sharded head, gathered
        if mixed:
            hidden, weight = hidden.to(self.compute_dtype), weight.to(self.compute_dtype)
        return hidden, weight, backend

    def objective_params(self) -> ObjectiveParams:
        """The loss type's knobs from the config (eps_low/eps_high are passed on their own)."""
        # the [loss] section names every knob as the kernel's record does (pinned by a test)
        knobs = [f.name for f in dataclasses.fields(ObjectiveParams)]
        return ObjectiveParams(**{name: getattr(self.cfg, name) for name in knobs})

    def num_items(self, plan: StepPlan) -> float | None:
        """The whole optimiser step's denominator, so micro-batch losses add up to the step loss."""
        return LOSS_TYPES[self.cfg.loss_type].step_items(
            plan.num_sequences, plan.num_span_tokens, self.max_span_tokens
        )

    def micro_batch_scale(self, num_rows: int) -> float:
        """Factor on each micro-batch's loss: 1/rows where the step averages micro-batches (bnpo)."""
        return 1.0 / num_rows if LOSS_TYPES[self.cfg.loss_type].mean_of_micro_batches else 1.0

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
        """[M] log-probs of the span tokens (reference or old policy)."""
        hidden, weight, _ = self._hidden_and_head(model, batch)
        return span_logprobs(
            hidden,
            weight,
            batch.targets,
            batch.span_mask,
            temperature=self.temperature,
            impl=self.cfg.impl,
        )

    def __call__(
        self,
        model: torch.nn.Module,
        batch: PackedBatch,
        plan: StepPlan,
        *,
        ref_logp: torch.Tensor | None = None,
        old_logp: torch.Tensor | None = None,
        is_weights: torch.Tensor | None = None,
    ):
        """(SpanLossOutput, attention backend) of one packed row. ref_logp / old_logp / is_weights:
        [M] per span token (reference policy, old policy for the ratio, importance weights)."""
        hidden, weight, backend = self._hidden_and_head(model, batch)
        out = span_grpo_loss(
            hidden,
            weight,
            batch.targets,
            batch.span_mask,
            batch.advantages,
            ref_logp=ref_logp,
            old_logp=old_logp,
            is_weights=is_weights,
            bias_correction_kl=self.cfg.bias_correction_kl,
            beta=self.cfg.beta,
            eps_low=self.cfg.eps_low,
            eps_high=self.cfg.eps_high,
            temperature=self.temperature,
            loss_type=self.cfg.loss_type,
            ratio_level=self.cfg.importance_sampling_level,
            params=self.objective_params(),
            seq_ids=batch.seq_index,
            num_items=self.num_items(plan),
            impl=self.cfg.impl,
        )
        return out, backend
