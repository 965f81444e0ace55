"""Which rows of a generation batch can prefill a shared prompt prefix once.

R3's prompts come in families: one reflection prompt is sampled G times, the G retries after it
share everything up to their reflection, and every task prompt shares the chat template's system
turn. `generate` on its own prefills each row in full. With the rows sorted (families adjacent),
`shared_prefix_runs` cuts them into runs that share a prefix, chosen to save the most prefill
tokens; the HF sampler prefills each run's prefix once and expands its KV cache to the run's rows.
"""

from __future__ import annotations

__all__ = ["common_prefix_len", "shared_prefix_runs"]


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix_runs(rows: list[list[int]], min_shared: int = 16) -> list[tuple[int, int, int]]:
    """Cut `rows` (in the given order) into runs `(start, end, L)`: rows[start:end] share their
    first L tokens. The cut maximises the prefill tokens saved, the sum of (end - start - 1) * L,
    counting a run only when L >= min_shared. L < len(row) for every row (generation needs at least
    one new token); a row alone is a run of its own with L = len(row) - 1. Rows must be non-empty."""
    n = len(rows)
    if n == 0:
        return []
    # cap[i]: the longest prefix row i can hand to the cache; lcp[i]: rows i and i+1 in common.
    cap = [len(r) - 1 for r in rows]
    lcp = [min(common_prefix_len(rows[i], rows[i + 1]), cap[i], cap[i + 1]) for i in range(n - 1)]
    best = [0] * (n + 1)  # best[b]: most tokens saved over rows[:b]
    cut = [0] * (n + 1)  # cut[b]: where the last run of that best cut starts
    for b in range(1, n + 1):
        best[b], cut[b] = best[b - 1], b - 1  # rows[b-1] alone
        shared = cap[b - 1]
        for a in range(b - 2, -1, -1):  # run rows[a:b]; `shared` is its common prefix
            shared = min(shared, lcp[a])
            if shared < min_shared:
                break
            saved = best[a] + (b - a - 1) * shared
            if saved > best[b]:
                best[b], cut[b] = saved, a
    runs = []
    b = n
    while b > 0:
        a = cut[b]
        shared = min([cap[a]] + lcp[a : b - 1])
        runs.append((a, b, shared))
        b = a
    return runs[::-1]
