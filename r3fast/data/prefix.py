"""Shared group prefix: the G sequences of a group in one block, the prefix computed once.

A block is [trunk, branch_1, ..., branch_G] with

    trunk    = input_ids[:P-1]              (P = span_start, the shared prefix minus its last token)
    branch_i = input_ids_i[P-1:span_end_i]  (the last prefix token, then reflection i)

Each branch attends to the trunk and to itself (a tree mask, see attention.py); its position_ids
continue from P-1, so every token sees exactly the context and positions it has in its unshared
sequence and log-probs are unchanged. The last prefix token is repeated once per branch because its
hidden state predicts the first reflection token, a different target per branch; so a block costs
(P-1) + sum_i (span_len_i + 1) tokens instead of sum_i len_i. Tokens after span_end (none normally)
carry no loss and are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from .packing import IGNORE_INDEX, PackedBatch, RowColumns, TrainSequence, first_fit_decreasing

__all__ = ["pack_groups", "shared_blocks"]


def shared_blocks(seqs: Sequence[TrainSequence], max_tokens: int) -> list[list[int]]:
    """Split sequences into blocks of one shared prefix each, every block fitting in max_tokens.

    Sequences share a block only if they have the same group_id and an identical prefix
    input_ids[:span_start] (checked, not assumed). A group too long for one block is split into
    several, each with its own copy of the trunk.
    """
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault((s.group_id, tuple(s.input_ids[: s.span_start])), []).append(i)
    blocks: list[list[int]] = []
    for (_, prefix), members in groups.items():
        trunk = len(prefix) - 1
        cur: list[int] = []
        size = trunk
        for i in members:
            n = seqs[i].span_len + 1
            if trunk + n > max_tokens:
                raise ValueError(
                    f"sequence {i} needs {trunk + n} tokens (prefix {trunk + 1} + span {n - 1}) > "
                    f"max_tokens={max_tokens}; raise max_tokens or drop it"
                )
            if cur and size + n > max_tokens:
                blocks.append(cur)
                cur, size = [], trunk
            cur.append(i)
            size += n
        blocks.append(cur)
    return blocks


def block_len(seqs: Sequence[TrainSequence], block: Sequence[int]) -> int:
    return seqs[block[0]].span_start - 1 + sum(seqs[i].span_len + 1 for i in block)


def build_tree_row(seqs: Sequence[TrainSequence], blocks: Sequence[Sequence[int]]) -> PackedBatch:
    """Lay out shared-prefix blocks back to back in one row; cu_seqlens marks the blocks."""
    cols, cu = RowColumns([seqs[i] for b in blocks for i in b]), [0]
    for block in blocks:
        head = seqs[block[0]]
        p = head.span_start
        # the trunk: token t predicts prefix token t+1 (the same in every sequence of the block);
        # shared by the whole block, it belongs to no single sequence (src -1, branch 0)
        cols.add(head.input_ids[: p - 1], 0, head.input_ids[1:p], [False] * (p - 1), 0.0, -1)
        for k, i in enumerate(block, start=1):
            s = seqs[i]
            branch = s.input_ids[p - 1 : s.span_end]  # [span_len + 1]
            m = len(branch)
            # the token after the span is not in the row: its position predicts nothing
            tgt = s.input_ids[p : s.span_end] + [IGNORE_INDEX]
            cols.add(branch, p - 1, tgt, [True] * (m - 1) + [False], s.advantage, i, branch=k)
            cols.add_sampler_logp(s)
        cu.append(len(cols.ids))
    return cols.batch(cu, tree=True)


def pack_groups(
    seqs: Sequence[TrainSequence], max_tokens: int, *, seed: int | None = None
) -> list[PackedBatch]:
    """Shared-prefix packing: blocks of one group each (see module doc), first-fit-decreasing into rows.

    Span positions, targets, advantages and sampler_logp per sequence are the same as pack_sequences';
    only the layout differs (span positions appear in block order) and prefix tokens are stored once.
    """
    if not seqs:
        return []
    blocks = shared_blocks(seqs, max_tokens)
    rows = first_fit_decreasing([block_len(seqs, b) for b in blocks], max_tokens, seed=seed)
    return [build_tree_row(seqs, [blocks[j] for j in row]) for row in rows]
