"""A quiet first screen: vLLM's and transformers' INFO lines go to a log file, not the terminal.

By default (`train`, `eval`, `mine`, `wim`) only their warnings and errors reach stderr, so the
first lines on screen are r3fast's own; `--verbose` shows their INFO lines live. `train` keeps
the full engine log in the run directory (`vllm.log`). vLLM is told not to install its own stderr
handler (VLLM_CONFIGURE_LOGGING=0, read when it is imported); its records go through ours.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["LOG_FILE", "LIBRARY_LOGGERS", "quiet_libraries", "log_to_file", "run_header"]

LOG_FILE = "vllm.log"
LIBRARY_LOGGERS = ("vllm",)  # transformers keeps its own handler; only its verbosity is set
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Screen(logging.StreamHandler):
    """Ours, so that a second call replaces it rather than adding another."""


class _File(logging.FileHandler):
    pass


def quiet_libraries(verbose: bool = False) -> None:
    """Library loggers at INFO into our handlers; the terminal sees WARNING and up (INFO if verbose).
    User settings win: VLLM_CONFIGURE_LOGGING and TRANSFORMERS_VERBOSITY set in the environment."""
    if "vllm" not in sys.modules:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "warning")
    screen_level = logging.INFO if verbose else logging.WARNING
    if "transformers" in sys.modules:  # imported already: TRANSFORMERS_VERBOSITY was read then
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(screen_level)
    for name in LIBRARY_LOGGERS:
        log = logging.getLogger(name)
        if os.environ.get("VLLM_CONFIGURE_LOGGING") != "0":
            continue  # the user configures vLLM's logging (or it was imported and did so itself)
        for h in list(log.handlers):
            if isinstance(h, _Screen):
                log.removeHandler(h)
        screen = _Screen(sys.stderr)
        screen.setLevel(screen_level)
        screen.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(screen)
        log.setLevel(logging.INFO)  # the file (log_to_file) gets INFO even when the screen does not
        log.propagate = False


def log_to_file(run_dir: str | Path) -> Path:
    """vLLM's INFO records also into `run_dir/vllm.log` (appended: a resumed run keeps it)."""
    path = Path(run_dir) / LOG_FILE
    for name in LIBRARY_LOGGERS:
        log = logging.getLogger(name)
        for h in list(log.handlers):
            if isinstance(h, _File):
                log.removeHandler(h)
                h.close()
        handler = _File(path, encoding="utf-8", delay=True)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(_FORMAT))
        log.addHandler(handler)
    return path


def run_header(cmd: str, **fields: object) -> str:
    """The run's first line on screen: `r3fast train: model=... task=... device=...`."""
    return f"r3fast {cmd}: " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
