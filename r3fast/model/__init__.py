"""The learner's model forward: packed rows through a stock transformers decoder, attention backends."""

from .attention import ATTN_NAME, BACKENDS, available_backends, select_backend, use_packed_attention
from .forward import decoder_of, forward_hidden

__all__ = [
    "ATTN_NAME",
    "BACKENDS",
    "available_backends",
    "decoder_of",
    "forward_hidden",
    "select_backend",
    "use_packed_attention",
]
