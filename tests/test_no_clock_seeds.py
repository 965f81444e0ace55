"""The suite's randomness is deterministic by default: no test seeds from the clock or the OS, every
test's seed comes from its id, and fuzzing is opt-in (`--fuzz N`, see conftest.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import id_seed
from hypothesis import settings

TESTS = Path(__file__).resolve().parent
SEEDERS = {"manual_seed", "seed", "Random", "default_rng", "RandomState", "SeedSequence", "PCG64"}
CLOCKS = {"time", "time_ns", "perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "now",
          "utcnow", "today", "urandom", "randbits", "token_bytes", "getrandom"}  # fmt: skip


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            yield node, f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def clock_seeds(source: str) -> list[str]:
    """Seeding calls that take no seed (so the library draws one from the OS or clock) or whose
    seed is computed from a clock or the OS's entropy; and any use of time_ns."""
    found = []
    for node, name in _calls(ast.parse(source)):
        if name in SEEDERS:
            if not node.args and not node.keywords and name != "Random":
                found.append(f"line {node.lineno}: {name}() without a seed")
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if any(n in CLOCKS for _, n in _calls(arg)):
                    found.append(f"line {node.lineno}: {name}(...) seeded from a clock or the OS")
        if name in ("time_ns", "randbits", "urandom"):
            found.append(f"line {node.lineno}: {name}() in a test")
    return found


def test_no_test_seeds_from_the_clock():
    bad = {}
    for path in sorted(TESTS.glob("*.py")):
        hits = clock_seeds(path.read_text())
        if path.name == "conftest.py":  # the opt-in fuzz mode draws its seeds from the OS, on purpose
            hits = [h for h in hits if "randbits" not in h]
        if hits:
            bad[path.name] = hits
    assert not bad, f"tests that seed from the clock or the OS: {bad}"


def test_the_check_sees_clock_seeds():
    assert clock_seeds("import time, torch\ntorch.manual_seed(time.time_ns() % 2**31)\n")
    assert clock_seeds("import random\nrandom.seed()\n")
    assert clock_seeds("import numpy as np\nnp.random.default_rng(int(time.time()))\n")
    assert not clock_seeds("import torch\ntorch.manual_seed(1234)\ng = torch.Generator().manual_seed(7)\n")


def test_seed_comes_from_the_test_id(request, seed):
    if request.config.getoption("fuzz") or request.config.getoption("seed") is not None:
        assert seed in (request.config.getoption("seed"), request.node.callspec.params.get("seed"))
    else:
        assert seed == id_seed(request.node.nodeid)
    assert id_seed("tests/x.py::t[a]") == 1699969750  # CRC-32 & 0x7fffffff: the same on every machine


def test_hypothesis_is_derandomized_unless_fuzzing(request):
    assert settings.default.derandomize == (not request.config.getoption("fuzz"))
    assert settings.default.database is None


def test_fuzz_option_draws_fresh_seeds():
    cmd = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "--fuzz", "3",
           f"{Path(__file__).name}::test_seed_comes_from_the_test_id"]  # fmt: skip
    out = subprocess.run(cmd, cwd=TESTS, capture_output=True, text=True, check=True).stdout
    ids = [line for line in out.splitlines() if "test_seed_comes_from_the_test_id[seed=" in line]
    assert len(ids) == 3, out
