"""Chunked generation with a progress bar and per-chunk seeds (resumable, reproducible)."""

from __future__ import annotations

import dataclasses

from .progress import progress_bar
from .sampling import Completion, Sampler, SamplingParams
from .seeds import seed_for

__all__ = ["generate_chunked"]


def generate_chunked(
    sampler: Sampler,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    n: int | None = None,
    chunk_size: int = 32,
    desc: str = "generate",
    progress: bool = True,
) -> list[list[Completion]]:
    """`sampler.generate` over `chunk_size` prompts at a time, chunk k seeded from its own stream.

    With `n`, each prompt gets n samples and a chunk holds chunk_size // n prompts (so chunk_size
    bounds the sequences per call, whatever n is).

    Seeding per chunk keeps the result independent of how far a previous run got, so a
    resumed job draws the same samples.
    """
    if n is not None:
        params, chunk_size = dataclasses.replace(params, n=n), max(1, chunk_size // n)
    out: list[list[Completion]] = []
    bar = progress_bar(total=len(prompts), desc=desc, unit="prompts", enabled=progress, leave=False)
    for k, start in enumerate(range(0, len(prompts), chunk_size)):
        seed = None if params.seed is None else seed_for(params.seed, "chunk", k)
        out.extend(
            sampler.generate(prompts[start : start + chunk_size], dataclasses.replace(params, seed=seed))
        )
        bar.update(min(chunk_size, len(prompts) - start))
    bar.close()
    return out
