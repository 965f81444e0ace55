"""Final hidden states of a packed row, with attention kept inside each sequence.

Which path runs depends on the model's attention implementation:

    "r3fast_packed" (use_packed_attention)   our dispatcher: flash-attn varlen > torch varlen > flex > sdpa
    "sdpa" / "eager"                         transformers builds a block-diagonal causal mask from
                                             position_ids (only with attention_mask=None, use_cache=False)
    "flash_attention_*"                      transformers' own varlen path, fed our cu_seqlens
    "flex_attention"                         transformers' BlockMask from position_ids

Rows with a tree mask (shared prefix, `batch.branch_ids` set) always get an explicit mask: a 4D bool
tensor (sdpa, or additive float for eager) or a BlockMask (flex). transformers passes a 4D mask through
untouched (masking_utils._preprocess_mask_arguments), so the same decoder code runs.
"""

from __future__ import annotations

import torch

from ..data.packing import PackedBatch
from .attention import ATTN_NAME, MASK_BACKENDS, dense_packed_mask, flex_block_mask, select_backend
from .lm import decoder_of, unwrap

__all__ = ["compute_dtype", "forward_hidden"]


def _hf_mask_path(impl: str, batch: PackedBatch, dtype: torch.dtype) -> tuple[dict, str]:
    """kwargs and backend name for models on a stock transformers attention implementation."""
    if batch.branch_ids is not None:
        mask = dense_packed_mask(batch.cu_seqlens, batch.branch_ids)  # [1, 1, T, T] bool
        if impl == "eager":  # eager adds the mask to the scores
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            mask = torch.where(mask, zero, torch.finfo(dtype).min)
            return {"attention_mask": mask}, "eager_tree_mask"
        if impl == "sdpa":
            return {"attention_mask": mask}, "sdpa_tree_mask"
        raise ValueError(
            f"shared-prefix rows need attention 'sdpa', 'eager' or {ATTN_NAME!r}, the model uses {impl!r}"
        )
    if impl in ("sdpa", "eager", "flex_attention"):
        # attention_mask=None + use_cache=False: transformers derives the block-diagonal mask from
        # position_ids restarting at 0 (masking_utils.find_packed_sequence_indices).
        return {"attention_mask": None}, f"hf_{impl}_position_ids"
    if impl.startswith("flash_attention"):
        return {
            "attention_mask": None,
            "cu_seq_lens_q": batch.cu_seqlens,
            "cu_seq_lens_k": batch.cu_seqlens,
            "max_length_q": batch.max_seqlen,
            "max_length_k": batch.max_seqlen,
        }, f"hf_{impl}_varlen"
    raise ValueError(
        f"attention implementation {impl!r} cannot run packed rows; use sdpa, eager or {ATTN_NAME!r}"
    )


Segment = tuple[int, int, tuple[int, int] | None, torch.Tensor | None]


def _tree_segments(a: int, b: int, branch: list[int], device: torch.device) -> list[Segment] | None:
    """Segments of one [trunk, branch_1, ..., branch_G] block; None if it is not laid out that way."""
    runs: list[tuple[int, int, int]] = []  # (branch id, start, end)
    for i, k in enumerate(branch, start=a):
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1], i + 1)
        else:
            runs.append((k, i, i + 1))
    trunk_end = runs[0][2] if runs[0][0] == 0 else a
    tail = runs[1:] if runs[0][0] == 0 else runs
    ids = [k for k, _, _ in tail]
    if 0 in ids or len(set(ids)) != len(ids):
        return None
    segs: list[Segment] = [(a, trunk_end, None, None)] if trunk_end > a else []
    trunk = trunk_end - a
    for _, s, e in tail:
        if trunk == 0:
            segs.append((s, e, None, None))
            continue
        n = e - s
        own = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        mask = torch.cat([torch.ones(n, trunk, dtype=torch.bool, device=device), own], 1)
        segs.append((s, e, (a, trunk_end), mask[None, None]))
    return segs


def sdpa_blocks(batch: PackedBatch) -> list[Segment]:
    """Segments (q_start, q_end, kv_prefix, mask) for the per-segment SDPA backend.

    A segment's queries attend to the keys of `kv_prefix` (all of them) and then to their own range
    (causally); mask None = plain causal over the own range. A shared-prefix block becomes its trunk
    plus one segment per branch, so attention costs sum_i len_i * (trunk + len_i), never the block's
    L^2; a tree block laid out any other way falls back to one dense [L, L] mask.
    """
    cu = batch.cu_seqlens.tolist()  # host-device sync, once per row (not per layer)
    dev = batch.cu_seqlens.device
    br = batch.branch_ids.tolist() if batch.branch_ids is not None else None
    out: list[Segment] = []
    for a, b in zip(cu, cu[1:], strict=False):
        if br is None:
            out.append((a, b, None, None))
            continue
        segs = _tree_segments(a, b, br[a:b], dev)
        if segs is None:
            local = torch.tensor([0, b - a], dtype=torch.int32, device=dev)
            segs = [(a, b, None, dense_packed_mask(local, batch.branch_ids[a:b]))]
        out += segs
    return out


def head_dim_of(config) -> int:
    """Attention head width: the config's own `head_dim` where it has one (Qwen3, Gemma), else H / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _ours(
    batch: PackedBatch, device: torch.device, dtype: torch.dtype, prefer: str | None, head_dim: int
) -> tuple[dict, str]:
    tree = batch.branch_ids is not None
    backend = select_backend(device, dtype, tree=tree, prefer=prefer, head_dim=head_dim)
    # An empty 4D "mask" makes transformers skip building a [T, T] mask that varlen kernels do not need.
    placeholder = torch.empty(1, 1, 0, 0, dtype=torch.bool, device=device)
    kw: dict = {"r3fast_backend": backend, "attention_mask": placeholder}
    if backend == "sdpa":
        kw["r3fast_blocks"] = sdpa_blocks(batch)
    elif backend == "flex":
        kw["attention_mask"] = flex_block_mask(batch.cu_seqlens, batch.branch_ids)
    else:
        kw.update(
            cu_seq_lens_q=batch.cu_seqlens,
            cu_seq_lens_k=batch.cu_seqlens,
            max_length_q=batch.max_seqlen,
            max_length_k=batch.max_seqlen,
        )
    assert not tree or backend in MASK_BACKENDS
    return kw, backend


def compute_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's where it is on for the parameter's device (fp32 master
    weights under bf16 autocast compute in bf16, so they get the half-precision varlen kernels), else
    the parameter's own."""
    dev = param.device.type
    if torch.is_autocast_enabled(dev) and param.dtype == torch.float32:
        return torch.get_autocast_dtype(dev)
    return param.dtype


def forward_hidden(
    model: torch.nn.Module, batch: PackedBatch, *, backend: str | None = None
) -> tuple[torch.Tensor, str]:
    """Decoder final hidden states [T, H] (after the final norm) of one packed row, and the backend used.

    The lm_head is not applied: the fused span loss does that on span positions only.
    `backend` picks one of attention.BACKENDS when the model uses "r3fast_packed" (default: fastest).
    """
    lm = unwrap(model)  # a DDP / FSDP2-wrapped decoder runs through its wrapper
    dec = decoder_of(lm)
    impl = dec.config._attn_implementation
    param = next(dec.parameters())
    if batch.input_ids.device != param.device:
        raise ValueError(
            f"batch is on {batch.input_ids.device}, model on {param.device}; call batch.to(device)"
        )
    if impl == ATTN_NAME:
        kw, name = _ours(batch, param.device, compute_dtype(param), backend, head_dim_of(dec.config))
    else:
        if backend is not None:
            raise ValueError(f"backend={backend!r} needs use_packed_attention(model) (model uses {impl!r})")
        kw, name = _hf_mask_path(impl, batch, param.dtype)
    inputs = dict(
        input_ids=batch.input_ids[None], position_ids=batch.position_ids[None], use_cache=False, **kw
    )
    if lm is model:
        return dec(**inputs).last_hidden_state[0], name  # [T, H]
    return model(**inputs)[0], name  # DecoderOnly returns the hidden states
