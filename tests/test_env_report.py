"""`r3fast env`: the bug-report block, with the span-loss self-test on this device."""

from __future__ import annotations

import json
import os

from r3fast import cli
from r3fast.env_report import PACKAGES, span_loss_self_test


def test_env_prints_versions_devices_and_self_test(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for label in ("python", *PACKAGES):
        assert f"- {label}: " in out, label
    assert "platform:" in out and "GPUs:" in out and "attention backends (fastest first):" in out
    assert "span-loss self-test" in out and "- torch: ok max rel err loss" in out


def test_env_json_and_every_runnable_impl_matches_the_reference(capsys):
    assert cli.main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"] and report["device"] in ("cpu", "cuda")
    tested = {r["impl"]: r for r in report["span_loss_self_test"]}
    assert set(tested) == set(report["span_loss_impls"])
    if os.environ.get("TRITON_INTERPRET") == "1":  # conftest on CPU: the Triton kernels run interpreted
        assert {"triton", "triton_atomic"} <= set(tested)
    for r in tested.values():
        assert r["status"] == "ok" and max(r["max_rel_err"].values()) < 1e-4, r


def test_no_self_test_flag_and_spent_budget(capsys):
    assert cli.main(["env", "--no-self-test"]) == 0
    assert "self-test" not in capsys.readouterr().out
    assert {r["status"] for r in span_loss_self_test(budget_s=-1)} == {"skipped (time budget spent)"}
