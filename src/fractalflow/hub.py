"""Resolve a model name to a local folder: a path as is, a hub id through the local hub cache."""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder for ``name_or_path``.

    An existing folder is returned as is. A hub id (``org/name``) is fetched with
    ``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE`` and the
    cache in ``HF_HUB_CACHE``: offline it serves only what is already cached.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise NotADirectoryError(f"{text} is a file; a model is a folder with config.json and model.safetensors")
    if not HUB_ID.match(text):
        raise FileNotFoundError(f"model folder {text!r} does not exist (and is not a hub id like 'org/name')")
    if path.parent.is_dir():  # 'runs/modle' beside an existing runs/: a typo, not an organisation
        raise FileNotFoundError(
            f"model folder {text!r} does not exist (read as a local path because {str(path.parent)!r} is a folder here)"
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise FileNotFoundError(f"{text!r} is no local folder, and huggingface_hub is not installed") from error
    try:
        return Path(
            snapshot_download(repo_id=text, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md"])
        )
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{text!r} is no local folder and is not in the hub cache, and the hub cannot be reached ({error})"
        ) from None
