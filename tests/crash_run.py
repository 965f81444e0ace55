"""`python tests/crash_run.py train ...`: the r3fast CLI with one extra task, `parity`, that a random
tiny model gets right about half the time, so tiny runs have a reward signal and really update
their weights. Used by the crash and README tests as a subprocess (it can be SIGKILLed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3fast.tasks import available_tasks, make_task, register_task  # noqa: E402


def parity_task(n: int = 64):
    return make_task(
        "parity",
        build_prompt=lambda ex: [{"role": "user", "content": f"Say one word about {ex['w']}."}],
        verify=lambda ex, text: len(text) % 2 == 0,
        examples=[{"w": f"topic {i}"} for i in range(n)],
    )


def register() -> None:
    if "parity" not in available_tasks():
        register_task("parity", parity_task)


if __name__ == "__main__":
    register()
    from r3fast import cli

    sys.exit(cli.main(sys.argv[1:]))
