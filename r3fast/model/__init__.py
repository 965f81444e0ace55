"""The learner's model forward: packed rows through a stock transformers decoder, attention backends."""

from .attention import ATTN_NAME, BACKENDS, available_backends, select_backend, use_packed_attention
from .forward import decoder_of, forward_hidden
from .lm import DecoderOnly, unwrap

__all__ = [
    "ATTN_NAME",
    "BACKENDS",
    "DecoderOnly",
    "available_backends",
    "decoder_of",
    "forward_hidden",
    "select_backend",
    "unwrap",
    "use_packed_attention",
]
