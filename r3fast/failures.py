"""Where each step's failures come from: a mined JSONL file (offline, as in the paper) or
mining on the fly from the task's train split (online). One class, one cursor, resumable."""

from __future__ import annotations

import random

from .config import R3Config
from .failure_file import Failure, read_failures
from .mining import mine_failures
from .sampling import Sampler, SamplingParams
from .seeds import seed_for
from .tasks.base import example_problem

__all__ = ["FailureSource"]


class FailureSource:
    """Hands out `k` failures per call in a seeded order; `state_dict` holds the cursor."""

    def __init__(
        self,
        *,
        task,
        path: str | None = None,
        online: bool = False,
        seed: int = 0,
        tries: int = 4,
        pool_size: int = 2048,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        """rank/world: data-parallel shares. Every rank walks the same seeded order and takes every
        world-th item from position rank, so the ranks' shares of a step are disjoint and together
        are what one process taking world x as many would get."""
        if (path is None) == (not online):
            raise ValueError("give exactly one of data.failures (a mined JSONL file) or data.online=true")
        self.task, self.seed, self.tries, self.online = task, seed, tries, online
        self.rank, self.world = rank, world
        self.cursor = 0  # failures handed out (offline) or examples consumed (online)
        self.base = 0  # where this world's deal starts in the seeded order (a resume at another world size)
        if online:
            self.pool = task.dataset(pool_size, seed=seed, split="train")
        else:
            self.pool = read_failures(
                path, check=lambda ex: example_problem(task, ex), task=f"task {getattr(task, 'name', '?')!r}"
            )

    @classmethod
    def from_config(cls, cfg: R3Config, task, *, rank: int = 0, world: int = 1) -> FailureSource:
        """[data]'s failure set (or online mining with data.mine_tries), ordered by trainer.seed."""
        d = cfg.data
        return cls(task=task, path=None if d.mines_online else d.failures, online=d.mines_online,
                   seed=cfg.trainer.seed, tries=d.mine_tries, rank=rank, world=world)  # fmt: skip

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.pool)))
        random.Random(seed_for(self.seed, "failure-order", epoch)).shuffle(order)
        return order

    def _take(self, k: int) -> list:
        items = []
        for _ in range(k):
            epoch, i = divmod(self.base + self.cursor * self.world + self.rank, len(self.pool))
            items.append(self.pool[self._order(epoch)[i]])
            self.cursor += 1
        return items

    def next(
        self, k: int, *, sampler: Sampler, tokenizer, params: SamplingParams, progress: bool = True
    ) -> list[Failure]:
        if not self.online:
            return self._take(k)
        # Online: mine fresh examples until k failures are found (bounded: 8 rounds).
        found: list[Failure] = []
        for round_ in range(8):
            examples = self._take(k)
            res = mine_failures(
                sampler,
                tokenizer,
                self.task,
                examples,
                tries=self.tries,
                keep_per_example=1,
                progress=progress,
                params=SamplingParams(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_new_tokens=params.max_new_tokens,
                    seed=None if params.seed is None else seed_for(params.seed, "mine-round", round_),
                ),
            )
            found += res.failures
            if len(found) >= k:
                break
        return found[:k]

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "base": self.base, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        self.cursor, self.base = int(state["cursor"]), int(state.get("base", 0))

    @staticmethod
    def redeal(states: list[dict], world: int, rank: int) -> dict:
        """This rank's cursor when a run saved by len(states) processes resumes with `world`: the same
        state at the same world size; else a new deal that starts past every item any saved rank was
        handed (position base + max(cursor) x saved world of the seeded order), so nothing is seen
        twice and the deal is a pure function of the checkpoint (items that ranks with a smaller cursor
        had not reached yet are skipped)."""
        if len(states) == world:
            return states[rank]
        saved = len(states)
        base = int(states[0].get("base", 0)) + max(int(st["cursor"]) for st in states) * saved
        return {"cursor": 0, "base": base, "world": world}
