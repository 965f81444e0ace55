"""Named seed streams: every random draw of a run is seeded by `seed_for(run_seed, stream, *index)`.

A hash of (run seed, stream name, indices), not `seed + k` offsets: offsets collide (reflection chunk
k + 1 and retry chunk k got the same seed when the two streams sat one apart), hashes do not in
practice, and a resumed run re-derives exactly the seeds the straight run used.
"""

from __future__ import annotations

import hashlib

__all__ = ["seed_for"]


def seed_for(seed: int, stream: str, *index: int) -> int:
    """A seed in [0, 2**62) that is a pure function of its arguments (stable across processes)."""
    key = ":".join([str(int(seed)), stream, *(str(int(i)) for i in index)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 2
