"""The R3 effect with intervals: vanilla vs trained, 1st and 2nd try, on the same held-out problems.

From two `EvalResult`s over the same examples (same order, same decoding): each of the paper's four
columns with a 95 % Wilson interval; the differences trained − vanilla with a paired bootstrap
interval over problems; and the paper's framing, the 2nd try's accuracy given a 1st-try failure.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

from .atomic import write_text_atomic
from .evaluate import EvalResult
from .stats import paired_bootstrap, wilson

__all__ = ["effect", "effect_table", "write_effect"]


def _flags(res: EvalResult) -> tuple[list[float], list[float]]:
    first = [float(r["first_ok"]) for r in res.records]
    second = [float(r["first_ok"] or r.get("second_ok", False)) for r in res.records]
    return first, second


def _given_failure(res: EvalResult) -> dict:
    failed = [r for r in res.records if not r["first_ok"]]
    k = sum(bool(r.get("second_ok")) for r in failed)
    return {
        "k": k,
        "n": len(failed),
        "acc": k / len(failed) if failed else 0.0,
        "ci": list(wilson(k, len(failed))),
    }


def effect(vanilla: EvalResult, trained: EvalResult, *, seed: int = 0) -> dict:
    """Every figure of the R3 effect, as plain JSON-able values (fractions, not percent)."""
    if [r["example"] for r in vanilla.records] != [r["example"] for r in trained.records]:
        raise ValueError("vanilla and trained must be measured on the same examples, in the same order")
    vf, vs = _flags(vanilla)
    tf, ts = _flags(trained)
    n = len(vf)
    out: dict = {"n": n}
    for name, flags in (
        ("vanilla_first", vf),
        ("vanilla_second", vs),
        ("trained_first", tf),
        ("trained_second", ts),
    ):
        k = sum(flags)
        out[name] = k / n if n else 0.0
        out[f"{name}_ci"] = list(wilson(k, n))
    for name, a, b in (("diff_first", vf, tf), ("diff_second", vs, ts)):
        d, lo, hi = paired_bootstrap(a, b, seed=seed)
        out[name], out[f"{name}_ci"] = d, [lo, hi]
    out["second_given_first_failed"] = {
        "vanilla": _given_failure(vanilla),
        "trained": _given_failure(trained),
    }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def effect_table(effects: dict[str, dict]) -> str:
    """Markdown: one row per decoding (label -> `effect(...)`), intervals in brackets."""
    lines = [
        "| decoding | n | vanilla 1st | vanilla 2nd | trained 1st | trained 2nd | Δ 1st | Δ 2nd |"
        " 2nd given 1st failed (vanilla → trained) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, e in effects.items():
        cells = [f"{_pct(e[k])} [{_pct(e[k + '_ci'][0])}, {_pct(e[k + '_ci'][1])}]"
                 for k in ("vanilla_first", "vanilla_second", "trained_first", "trained_second")]  # fmt: skip
        diffs = [f"{100 * e[k]:+.1f} [{100 * e[k + '_ci'][0]:+.1f}, {100 * e[k + '_ci'][1]:+.1f}]"
                 for k in ("diff_first", "diff_second")]  # fmt: skip
        g = e["second_given_first_failed"]
        given = f"{_pct(g['vanilla']['acc'])} → {_pct(g['trained']['acc'])}"
        lines.append(f"| {label} | {e['n']} | " + " | ".join(cells + diffs) + f" | {given} |")
    lines.append("")
    lines.append(
        "Accuracies in %, 95 % Wilson intervals; Δ = trained − vanilla in points, 95 % paired "
        "bootstrap interval over problems; 2nd try = right on the 1st try or right after one reflection."
    )
    return "\n".join(lines)


def _versions() -> dict:
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        pass
    return out


def write_effect(run_dir: str | Path, effects: dict[str, dict], config: dict, seconds: float) -> str:
    """`r3_effect.json`: the headline decoding's figures at the top level (n, the four accuracies,
    diff_first/diff_second with their _ci), every decoding under "decodings", and what produced them."""
    headline = next(iter(effects))
    record = {
        **effects[headline],
        "decoding": headline,
        "decodings": effects,
        "config": config,
        "versions": _versions(),
        "device": f"{platform.processor() or platform.machine()}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": seconds,
    }
    path = Path(run_dir) / "r3_effect.json"
    write_text_atomic(path, json.dumps(record, indent=1))
    return str(path)
