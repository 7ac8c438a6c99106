"""The Dockerfile's build context: what it binds is what .dockerignore lets through, and its
install step refuses a wheelhouse that `make wheelhouse` did not finish.

The image itself is not built here (no Docker engine on our machines); README, "Several workers"."""

from __future__ import annotations

import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sent_to_docker(path: str, patterns: list[str]) -> bool:
    """Whether the build context keeps ``path`` under .dockerignore ``patterns`` (the last
    matching pattern decides; ``!`` keeps; a pattern that matches a folder matches its files)."""
    kept = True
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/").replace("**", "*")
        if fnmatch(path, glob) or path.startswith(glob + "/"):
            kept = keep
    return kept


def test_dockerignore_sends_every_bound_source_and_nothing_else():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    sources = re.findall(r"--mount=type=bind,source=([^,\s]+)", (REPO / "Dockerfile").read_text())
    assert sources == ["wheelhouse", "docker/install-wheelhouse.sh"]
    for source in sources:
        assert sent_to_docker(source, patterns)
        assert sent_to_docker(f"{source}/torch-2.13.0-cp311.whl", patterns)
    for unsent in ("src/fractalflow/cli.py", ".venv/bin/python", "runs/default/model.safetensors", "data/emoji"):
        assert not sent_to_docker(unsent, patterns)


def test_install_step_refuses_an_unfinished_wheelhouse(tmp_path):
    (tmp_path / "torch-2.13.0-cp311.whl").write_bytes(b"")  # a `make wheelhouse` that stopped halfway
    done = subprocess.run(
        ["sh", str(REPO / "docker" / "install-wheelhouse.sh"), str(tmp_path), "false"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path} is not a finished wheelhouse (run: make wheelhouse)"
