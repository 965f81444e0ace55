"""`trainer.push_to_hub: org/name`: upload `final/` (weights, tokenizer, model card) to the HF hub.

Offline (HF_HUB_OFFLINE) is refused before the run starts (`check_push`), not after hours of
training; any failure of the upload itself (no token, no network, no rights) is one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError

__all__ = ["check_push", "push_folder"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_push(repo_id: str | None) -> None:
    """A pushable `org/name` on a machine that may reach the hub, else a one-line `UserError`."""
    if repo_id is None:
        return
    if not _REPO_ID.match(repo_id):
        raise UserError(f"trainer.push_to_hub must be a hub repo id like 'org/name', got {repo_id!r}")
    if _offline():
        raise UserError(
            f"trainer.push_to_hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, "
            "or drop push_to_hub and upload later with `hf upload <org/name> <run>/final`"
        )
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise UserError("trainer.push_to_hub needs huggingface_hub: pip install huggingface_hub") from None


def push_folder(folder: str | Path, repo_id: str, *, private: bool = True) -> str:
    """Create `repo_id` (private unless it exists) and upload `folder`; returns the repo's URL."""
    check_push(repo_id)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="r3fast: final model"
        )
    except Exception as e:  # network, auth, permissions: the hub's reason on one line
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise UserError(
            f"trainer.push_to_hub {repo_id}: upload failed ({why}); the model is kept in {folder}"
        ) from None
    return str(url)
