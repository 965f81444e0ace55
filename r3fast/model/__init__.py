"""The learner's model forward: packed rows through a stock transformers decoder, attention backends."""

from .attention import ATTN_NAME, BACKENDS, available_backends, select_backend, use_packed_attention
from .forward import forward_hidden
from .lm import DecoderOnly, decoder_of, full_weight, is_fsdp2, is_sharded_tensor, unwrap, whole_weights

__all__ = [
    "ATTN_NAME",
    "BACKENDS",
    "DecoderOnly",
    "available_backends",
    "decoder_of",
    "forward_hidden",
    "full_weight",
    "is_fsdp2",
    "is_sharded_tensor",
    "select_backend",
    "unwrap",
    "use_packed_attention",
    "whole_weights",
]
