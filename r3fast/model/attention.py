"""Attention over packed rows for stock transformers models, without forking model code.

`use_packed_attention(model)` registers one attention function, "r3fast_packed", in transformers'
`AttentionInterface` and switches the model to it. The function reads the `cu_seq_lens_q/k`,
`max_length_q/k` kwargs (transformers' own varlen names, which every decoder layer passes through)
and runs the fastest backend that is correct for the inputs:

    flash_attn_varlen  flash-attn's varlen kernel      CUDA, fp16/bf16, optional `gpu` extra
    torch_varlen       torch.nn.attention.varlen       CUDA, fp16/bf16, torch >= 2.9
    flex               flex_attention + BlockMask      CUDA (flex has no CPU backward); also tree masks
    sdpa               one SDPA call per sequence/branch  CPU or anything else; also tree masks

A packed row may also carry a tree mask (shared group prefix, see data/prefix.py): then only the mask
backends (flex, sdpa) apply. The mask of a row is described by two per-token id tensors:
`doc` (which attention block, from cu_seqlens) and `branch` (0 = trunk seen by every later token
of the block, k > 0 = branch k, seen only by itself):

    allowed(q, kv) = doc[q] == doc[kv]  and  kv <= q  and  (branch[kv] == 0  or  branch[kv] == branch[q])
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "ATTN_NAME",
    "BACKENDS",
    "available_backends",
    "dense_packed_mask",
    "doc_ids",
    "flex_block_mask",
    "packed_attention_forward",
    "select_backend",
    "use_packed_attention",
]

ATTN_NAME = "r3fast_packed"
BACKENDS = ("flash_attn_varlen", "torch_varlen", "flex", "sdpa")
MASK_BACKENDS = ("flex", "sdpa")  # the ones that can apply a tree (shared-prefix) mask
_HALF = (torch.float16, torch.bfloat16)


def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _torch_varlen() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    return varlen_attn


FLEX_MIN_HEAD_DIM = 16  # compiled flex_attention (Inductor) refuses smaller heads: "NYI: ... at least 16"


def available_backends(
    device: torch.device,
    dtype: torch.dtype,
    *,
    tree: bool = False,
    grad: bool | None = None,
    head_dim: int | None = None,
) -> list[str]:
    """Backends that run correctly here, fastest first. grad: will backward run (default: grad mode);
    head_dim: the model's (None: assume a real model's, >= 16)."""
    grad = torch.is_grad_enabled() if grad is None else grad
    out: list[str] = []
    if device.type == "cuda":
        if not tree and dtype in _HALF and _has_flash_attn():
            out.append("flash_attn_varlen")
        if not tree and dtype in _HALF and _torch_varlen() is not None:
            out.append("torch_varlen")
        if head_dim is None or head_dim >= FLEX_MIN_HEAD_DIM:
            out.append("flex")
    out.append("sdpa")
    if device.type != "cuda" and not grad:
        out.append("flex")  # CPU flex: forward only, unfused (eager); never the default, useful as a check
    return out


def select_backend(
    device: torch.device,
    dtype: torch.dtype,
    *,
    tree: bool = False,
    prefer: str | None = None,
    head_dim: int | None = None,
) -> str:
    """The fastest available backend, or `prefer` if it is available (ValueError if not)."""
    ok = available_backends(device, dtype, tree=tree, head_dim=head_dim)
    if prefer is None:
        return ok[0]
    if prefer not in BACKENDS:
        raise ValueError(f"unknown attention backend {prefer!r}; choose from {BACKENDS}")
    if prefer not in ok:
        raise ValueError(
            f"backend {prefer!r} is not available for {device.type}/{dtype}"
            f" (tree={tree}, head_dim={head_dim}); have {ok}"
        )
    return prefer


def doc_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[S+1] boundaries -> [T] block index of every token."""
    lens = cu_seqlens.diff().long()
    return torch.repeat_interleave(torch.arange(lens.numel(), device=cu_seqlens.device), lens)


def dense_packed_mask(cu_seqlens: torch.Tensor, branch_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit boolean mask [1, 1, T, T] (True = may attend) for SDPA / eager. O(T^2) memory."""
    doc = doc_ids(cu_seqlens)  # [T]
    t = doc.numel()
    allowed = (doc[:, None] == doc[None, :]) & torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()
    if branch_ids is not None:
        allowed &= (branch_ids[None, :] == 0) | (branch_ids[:, None] == branch_ids[None, :])
    return allowed[None, None]


def flex_block_mask(cu_seqlens: torch.Tensor, branch_ids: torch.Tensor | None = None):  # -> BlockMask
    """The same mask as a flex_attention BlockMask (only non-empty tiles are computed)."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = doc_ids(cu_seqlens)
    br = branch_ids if branch_ids is not None else torch.zeros_like(doc)

    def mask_mod(b, h, q, kv):
        return (doc[q] == doc[kv]) & (kv <= q) & ((br[kv] == 0) | (br[kv] == br[q]))

    t = doc.numel()
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=t, KV_LEN=t, device=doc.device)


@functools.cache
def _flex(compiled: bool) -> Callable:
    # Uncompiled flex_attention materialises the full score matrix; compiled it is a fused kernel.
    # Default (automatic) dynamic shapes: every packed row has its own length, and with dynamic=False
    # each new length recompiles until dynamo's cache limit, after which it silently runs unfused.
    # On CPU compiling takes ~20 s and buys nothing for a forward-only check, so it runs eagerly there.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


def _flash_attn_varlen(q, k, v, cu, max_len, scale):
    from flash_attn import flash_attn_varlen_func  # optional `gpu` extra

    # q: [T, Hq, D], k/v: [T, Hkv, D]; flash-attn handles GQA itself.
    return flash_attn_varlen_func(
        q, k, v, cu, cu, max_len, max_len, dropout_p=0.0, softmax_scale=scale, causal=True
    )


@functools.cache
def _varlen_params() -> frozenset[str]:
    return frozenset(inspect.signature(_torch_varlen()).parameters)


def _torch_varlen_attn(q, k, v, cu, max_len, scale):
    fn, params = _torch_varlen(), _varlen_params()
    kw: dict = {}
    # torch 2.9-2.11 take `is_causal`; later versions express causality as window_size=(-1, 0).
    if "is_causal" in params:
        kw["is_causal"] = True
    else:
        kw["window_size"] = (-1, 0)
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if "scale" in params:
        kw["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(f"this torch's varlen_attn has no `scale` argument; the model needs scale={scale}")
    return fn(q, k, v, cu, cu, max_len, max_len, **kw)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, Hq, T, D]
    key: torch.Tensor,  # [1, Hkv, T, D]
    value: torch.Tensor,  # [1, Hkv, T, D]
    attention_mask: torch.Tensor | None,  # a BlockMask (flex), else an empty [1, 1, 0, 0] placeholder
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:  # ([1, T, Hq, D], no attention weights)
    """The function registered as "r3fast_packed" in transformers' AttentionInterface."""
    backend = kwargs.pop("r3fast_backend", None)
    if backend is None:
        # Not called through forward_hidden (e.g. generate with padding and a KV cache): behave exactly
        # like transformers' sdpa, whose mask builder is registered under our name for this case.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if dropout:
        raise ValueError(
            "r3fast_packed attention has no dropout; call model.eval() or set attention_dropout=0"
        )
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise NotImplementedError(
            "r3fast_packed attention models neither sliding windows nor logit soft-capping"
        )
    if query.shape[0] != 1:
        raise ValueError(f"packed attention takes one packed row (batch 1), got batch {query.shape[0]}")
    if backend in ("flash_attn_varlen", "torch_varlen"):
        cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
        if cu is None or max_len is None:
            raise ValueError(
                f"backend {backend} needs the cu_seq_lens_q / max_length_q kwargs (use forward_hidden)"
            )
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
        fn = _flash_attn_varlen if backend == "flash_attn_varlen" else _torch_varlen_attn
        return fn(q, k, v, cu.to(torch.int32), int(max_len), scaling)[None], None
    if backend == "flex":
        flex = _flex(query.device.type == "cuda")
        out = flex(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    if backend == "sdpa":
        blocks = kwargs.get("r3fast_blocks")
        if blocks is None:
            raise ValueError("sdpa backend needs the r3fast_blocks kwarg (use forward_hidden)")
        rep = query.shape[1] // key.shape[1]
        if rep > 1:  # GQA: SDPA's enable_gqa is not taken with an explicit mask on every build
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
        out = torch.empty_like(query)  # [1, Hq, T, D]
        for a, b, prefix, mask in blocks:  # one SDPA per segment: O(sum L^2) work, no [T, T] mask
            q, k, v = query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]
            if prefix is not None:  # a branch of a shared-prefix block: the trunk's keys come first
                pa, pb = prefix
                k = torch.cat([key[:, :, pa:pb], k], 2)
                v = torch.cat([value[:, :, pa:pb], v], 2)
            out[:, :, a:b] = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling
            )
        return out.transpose(1, 2).contiguous(), None
    raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, packed_attention_forward)
    # Mask builder for calls outside forward_hidden (padding, caches). forward_hidden always hands the
    # decoder a 4D mask (or an empty 4D placeholder for varlen), which transformers passes through as-is.
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def use_packed_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a transformers model to the "r3fast_packed" attention function (in place; returns it)."""
    _register()
    model.set_attn_implementation(ATTN_NAME)
    return model
