"""Split a tokenised document into segments at line ends, so no segment starts mid-sentence."""

from __future__ import annotations

__all__ = ["split_segments", "tokenize_document"]


def tokenize_document(tokenizer, text: str) -> tuple[list[int], list[bool]]:
    """(ids, ends_line): ``ends_line[i]`` is True when token i's text ends with a newline.

    The document is tokenised once, whole, so the concatenated segments are exactly the ids a plain
    prefill of the same document would see. Slow tokenizers (no offsets) give no line ends.
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end > 0 and text[end - 1] == "\n" for _, end in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, KeyError):
        enc = tokenizer(text, add_special_tokens=False)
        ends = [False] * len(enc["input_ids"])
    return list(enc["input_ids"]), ends


def split_segments(ends_line: list[bool], segment_tokens: int, min_fraction: float = 0.5) -> list[slice]:
    """Slices covering ``range(len(ends_line))`` in order, each at most ``segment_tokens`` long.

    Each cut goes after the last line-ending token inside [start + min_fraction * budget, start +
    budget); without one, the segment is cut at exactly ``segment_tokens``.
    """
    if segment_tokens < 1:
        raise ValueError(f"segment_tokens must be >= 1, got {segment_tokens}")
    n, start, out = len(ends_line), 0, []
    while start < n:
        stop = min(start + segment_tokens, n)
        if stop < n:
            lo = start + max(1, int(min_fraction * segment_tokens))
            cut = next((i + 1 for i in range(stop - 1, lo - 2, -1) if ends_line[i]), None)
            stop = cut if cut is not None and cut > start else stop
        out.append(slice(start, stop))
        start = stop
    return out
