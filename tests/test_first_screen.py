"""A quiet first screen: vLLM's INFO lines go to the run's vllm.log, not the terminal (--verbose
shows them); an unknown model on a machine without a network fails at once, in one line."""

from __future__ import annotations

import logging
import socket

import pytest

from r3fast import cli
from r3fast.errors import UserError
from r3fast.logging_setup import log_to_file, quiet_libraries
from r3fast.model_names import check_hub_reachable


@pytest.fixture
def vllm_logger(monkeypatch):
    """The `vllm` logger as vLLM leaves it unconfigured (VLLM_CONFIGURE_LOGGING=0), restored after."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("VLLM_CONFIGURE_LOGGING", "0")
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)  # restored after the test
    log = logging.getLogger("vllm")
    saved = (list(log.handlers), log.level, log.propagate)
    hf_level = hf_logging.get_verbosity()
    yield logging.getLogger("vllm.engine.arg_utils")  # a child, as vLLM's modules log
    hf_logging.set_verbosity(hf_level)
    for h in log.handlers:
        if h not in saved[0]:
            h.close()
    log.handlers[:], log.level, log.propagate = saved


def test_engine_info_goes_to_the_log_file_not_the_screen(vllm_logger, tmp_path, capsys):
    quiet_libraries(verbose=False)
    path = log_to_file(tmp_path)
    vllm_logger.info("Triton is not installed")
    vllm_logger.warning("NUMA binding failed")
    err = capsys.readouterr().err
    assert "Triton is not installed" not in err and "NUMA binding failed" in err
    text = path.read_text()
    assert path.name == "vllm.log" and "INFO vllm.engine.arg_utils: Triton is not installed" in text
    assert "NUMA binding failed" in text


def test_verbose_shows_engine_info_live(vllm_logger, capsys):
    quiet_libraries(verbose=True)
    quiet_libraries(verbose=True)  # twice (eval then train in one process): still one line each
    vllm_logger.info("engine args: ...")
    assert capsys.readouterr().err.count("engine args: ...") == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once this returns: a connect is refused at once


def test_unknown_model_without_a_network_fails_at_once(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(UserError, match="cannot be reached and the model is not in the local hub cache"):
        check_hub_reachable("no-such-model-xyz")
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--model", "no-such-model-xyz", "--n", "1"])
    captured = capsys.readouterr()
    assert captured.out.startswith(
        "r3fast eval: model=no-such-model-xyz task=countdown"
    )  # r3fast's line first
    err = captured.err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "cannot be reached" in err, err
    (tmp_path / "models--org--cached").mkdir()
    check_hub_reachable("org/cached")  # in the local cache: nothing to ask the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_hub_reachable("org/anything")  # offline: transformers answers from the cache, at once
