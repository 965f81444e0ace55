"""Per-rank memory of a data-parallel learner, DDP vs FSDP2: one accounting, two uses.

`static_bytes(model, ...)` counts, from a model's parameter shapes alone (a meta-device model
works), what each rank holds between steps: weights, gradients, AdamW's two moments, the KL
reference, the sampler's weights, and under FSDP2 the parameters gathered during a forward. Rank 0's
share is counted (FSDP2 splits dim 0 into world chunks of ceil(d / world) rows; rank 0's is the
largest). `measured_bytes(...)` counts the same items from the tensors a live rank really holds, so
a test can pin the accounting to the real thing at small sizes before it is trusted at 7B.

    full   fp32 master weights, fp32 gradients (FSDP2 reduces in fp32), fp32 AdamW moments
    lora   the base in the serving dtype, frozen; adapters (r, every linear) trained in fp32
    qlora  lora on a 4-bit base: NF4 linears at 0.5 byte + one fp32 absmax per 64 weights
           (bitsandbytes without double quantisation); embeddings and head in the serving dtype
"""

from __future__ import annotations

import math

import torch

__all__ = ["MODELS", "meta_model", "measured_bytes", "static_bytes"]

MODELS = {  # public configs (sizes only; built on the meta device, nothing downloaded)
    "qwen2.5-1.5b": ("qwen2", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                     num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     tie_word_embeddings=True)),
    "qwen2.5-7b": ("qwen2", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                   num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                   tie_word_embeddings=False)),
    "llama-3.1-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     tie_word_embeddings=False)),
}  # fmt: skip

NF4_BYTES = 0.5 + 4 / 64


def meta_model(name: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kind, dims = MODELS[name]
    cfg_cls, model_cls = (
        (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    )
    with torch.device("meta"):
        return model_cls(cfg_cls(**dims))


def _rank0_numel(shape: torch.Size, world: int) -> int:
    if not shape:
        return 1
    rows = min(shape[0], math.ceil(shape[0] / world))
    return rows * math.prod(shape[1:])


def _unique(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return list(model.named_parameters())  # tied parameters once


def _layers(model: torch.nn.Module):
    return model.get_decoder().layers


def _lora_numel(model: torch.nn.Module, r: int) -> int:
    """Adapter parameters of r-rank LoRA on every linear of the decoder layers (peft's all-linear)."""
    return sum(r * (m.in_features + m.out_features) for m in _layers(model).modules()
               if isinstance(m, torch.nn.Linear))  # fmt: skip


def static_bytes(
    model: torch.nn.Module,
    *,
    mode: str,
    world: int,
    setting: str = "full",
    reference: bool = True,
    sampler: str = "vllm",
    serving_bytes: int = 2,
    compute_bytes: int = 2,
    lora_r: int = 16,
) -> dict[str, int]:
    """Bytes rank 0 holds between steps (plus FSDP2's gathered parameters during a forward), by item.
    mode: ddp | fsdp2 (world 1: a single process); sampler: vllm (its own weights) | hf (DDP shares
    the learner's module; FSDP2 keeps a whole copy)."""
    sharded = mode == "fsdp2" and world > 1
    params = _unique(model)
    total = sum(p.numel() for _, p in params)
    local = sum(_rank0_numel(p.shape, world) for _, p in params) if sharded else total
    out = {"weights": 0, "grads": 0, "optimizer": 0, "reference": 0, "sampler": 0, "gathered": 0}
    if setting == "full":
        out["weights"] = out["grads"] = 4 * local
        out["optimizer"] = 8 * local
        out["reference"] = 4 * local if reference else 0
        copy = sampler == "vllm" or sharded
        out["sampler"] = serving_bytes * total if copy else 0
        if sharded:  # root (embeddings, norm, head) stays gathered; a layer and the next (prefetch)
            layer = max(sum(p.numel() for p in m.parameters()) for m in _layers(model))
            root = total - sum(p.numel() for p in _layers(model).parameters())
            out["gathered"] = compute_bytes * (root + 2 * layer)
        return out
    if sharded:
        raise ValueError("FSDP2 shards a full fine-tune only (r3fast refuses it with LoRA)")
    linear = sum(m.weight.numel() for m in _layers(model).modules() if isinstance(m, torch.nn.Linear))
    base = (
        serving_bytes * total if setting == "lora" else NF4_BYTES * linear + serving_bytes * (total - linear)
    )
    adapters = _lora_numel(model, lora_r)
    out["weights"] = int(base) + 4 * adapters
    out["grads"] = 4 * adapters
    out["optimizer"] = 8 * adapters
    out["sampler"] = serving_bytes * total if sampler == "vllm" else 0  # merged weights for vLLM
    return out


def _local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    if hasattr(t, "to_local"):
        t = t.to_local()
    return t.numel() * t.element_size()


def measured_bytes(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    reference: torch.nn.Module | None = None,
    sampler_model: torch.nn.Module | None = None,
) -> dict[str, int]:
    """What this rank holds, counted from its tensors (local shards of DTensors)."""
    moments = [v for st in optimizer.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    return {
        "weights": sum(_local_bytes(p) for p in model.parameters()),
        "grads": sum(_local_bytes(p.grad) for p in model.parameters()),
        "optimizer": sum(_local_bytes(v) for v in moments),
        "reference": sum(_local_bytes(p) for p in reference.parameters()) if reference is not None else 0,
        "sampler": sum(_local_bytes(p) for p in sampler_model.parameters())
        if sampler_model is not None
        else 0,
    }
