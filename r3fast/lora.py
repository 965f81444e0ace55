"""LoRA / QLoRA adapters through peft: the one owner of everything adapter-specific.

    apply_lora(model, spec)     peft LoRA on the policy (the base frozen; QLoRA: a 4-bit base)
    reference_off(model)        context: the same model with its adapters disabled = the KL reference
    head_weight(model)          the lm_head weight the span loss uses: base + B·A·s when lm_head is a
                                LoRA target (differentiable to A and B), else the frozen base weight
    merged_weights(model)       (HF name, merged tensor) for every weight, as the plain model names
                                them: what the vLLM sampler loads on sync and what final/ exports
    save_merged(model, dest)    final/: a plain `from_pretrained` model with the adapters merged in;
                                the adapter alone in final/adapter/

Nothing here runs unless `model.lora` is set; peft is imported only then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .model.lm import whole_weights

__all__ = ["apply_lora", "head_weight", "is_lora", "merged_weights", "reference_off", "save_merged"]


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def apply_lora(model: torch.nn.Module, spec: dict[str, Any], *, quantized: bool = False) -> torch.nn.Module:
    """The policy with LoRA adapters from `spec` (model.lora: r, alpha, dropout, target_modules)."""
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise UserError("model.lora needs peft: pip install 'r3fast[lora]'") from None
    targets = spec["target_modules"]
    head_name = _head_name(model)
    if spec["dropout"] > 0 and (targets == head_name or (isinstance(targets, list) and head_name in targets)):
        # the span loss applies the head as one merged matrix; LoRA dropout on its input has no such form
        raise UserError(
            f"model.lora: dropout must be 0 when {head_name} is a target (the span loss merges it)"
        )
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    cfg = LoraConfig(
        r=spec["r"],
        lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"],
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise UserError(f"model.lora: {' '.join(str(e).split())}") from None


def _head_name(model: torch.nn.Module) -> str:
    head = model.get_output_embeddings()
    return next((n for n, m in model.named_modules() if m is head), "lm_head")


def reference_off(model: torch.nn.Module):
    """The KL reference: the policy with its adapters disabled (exactly the frozen base)."""
    return model.disable_adapter() if is_lora(model) else nullcontext()


def _lora_layer(module: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return module if isinstance(module, LoraLayer) else None


def _base_weight(layer) -> torch.Tensor:
    base = layer.get_base_layer()
    if type(base.weight).__name__ == "Params4bit":  # QLoRA: dequantise for a merge
        from peft.utils.integrations import dequantize_module_weight

        return dequantize_module_weight(base)
    return base.weight


def head_weight(model: torch.nn.Module) -> torch.Tensor:
    """[V, H] weight the span loss multiplies by: a LoRA head merged (with grad to A, B)."""
    head = model.get_output_embeddings()
    layer = _lora_layer(head) if is_lora(model) else None
    if layer is None or layer.disable_adapters or not layer.active_adapters:
        return head.get_base_layer().weight if layer is not None else head.weight
    w = _base_weight(layer)
    for name in layer.active_adapters:
        if name in layer.lora_A:
            w = w + layer.get_delta_weight(name).to(w.dtype)
    return w


@torch.no_grad()
def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight under the plain model's names, adapters merged in; tied
    weights once. For a plain model these are its own parameters (no copy), FSDP2 shards gathered
    one at a time (`whole_weights`)."""
    if not is_lora(model):
        for name, p in whole_weights(model):
            yield name.replace("_orig_mod.", ""), p
        return
    base = model.get_base_model()
    seen: set[int] = set()
    for mod_name, module in base.named_modules():
        layer = _lora_layer(module)
        if layer is not None:
            w = _base_weight(layer).detach()
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    w = w + layer.get_delta_weight(name).to(w.dtype)
            seen.add(id(layer.get_base_layer().weight))
            yield f"{mod_name}.weight", w
            bias = getattr(layer.get_base_layer(), "bias", None)
            if bias is not None:
                seen.add(id(bias))
                yield f"{mod_name}.bias", bias
    for name, p in base.named_parameters():
        if id(p) in seen or ".lora_" in name or ".base_layer." in name:
            continue
        seen.add(id(p))
        yield name, p


def save_merged(model: torch.nn.Module, dest: str | Path, tokenizer=None) -> None:
    """dest: the merged model (`from_pretrained` loads it without peft); dest/adapter: the adapter."""
    dest = Path(dest)
    base = model.get_base_model()
    state = {k: v.detach().contiguous().cpu() for k, v in merged_weights(model)}
    with _plain_config(base):
        base.save_pretrained(dest, state_dict=state)
    model.save_pretrained(dest / "adapter")
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)


@contextmanager
def _plain_config(base: torch.nn.Module):
    """Save without a quantisation config: the merged weights are plain tensors."""
    q = getattr(base.config, "quantization_config", None)
    if q is not None:
        del base.config.quantization_config
    try:
        yield
    finally:
        if q is not None:
            base.config.quantization_config = q
