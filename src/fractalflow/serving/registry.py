"""ModelRegistry: model versions in a local folder, with aliases such as ``production``.

Layout of a registry folder::

    registry.json                 versions (sha256, parent, data, commit, metrics) and aliases
    models/<name>/v<N>/           a copy of each registered model folder

A version is named ``name:N``; ``name`` alone means its newest version. An alias
(``production``, ``canary``, any word) points at a version; ``promote`` moves an alias and
remembers where it pointed, ``rollback`` moves it back. Every change rewrites
``registry.json`` atomically, and readers (the server) re-read it when it changes, so
aliases move without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fractalflow.files import atomic_directory, atomic_write_text, cache_dir
from fractalflow.model.weights import CONFIG_NAME

REGISTRY_ENV = "FRACTALFLOW_REGISTRY"
INDEX = "registry.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def default_registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or cache_dir() / "registry")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: where it lies, its weights' sha256, what it came from, and its metrics."""

    name: str
    version: int
    sha256: str
    folder: str
    created: float
    parent: str = ""
    data: str = ""
    commit: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def weights_sha256(folder: Path) -> str:
    """SHA-256 over a model folder's safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    """The registry in ``root`` (default ``$FRACTALFLOW_REGISTRY``, else the cache's ``registry``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_registry_path()
        self._lock = threading.Lock()
        self._cache: tuple[float, dict] | None = None

    def _read(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.is_file():
            return {"versions": [], "aliases": {}, "alias_history": {}}
        stamp = path.stat().st_mtime_ns
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, json.loads(path.read_text()))
        return self._cache[1]

    def _write(self, index: dict[str, Any]) -> None:
        atomic_write_text(self.root / INDEX, json.dumps(index, indent=2) + "\n")

    def versions(self) -> list[ModelVersion]:
        return [ModelVersion(**entry) for entry in self._read()["versions"]]

    def aliases(self) -> dict[str, str]:
        return dict(self._read()["aliases"])

    def get(self, ref: str) -> ModelVersion:
        """A version by ``name:N``, ``name`` (its newest) or an alias."""
        index = self._read()
        ref = index["aliases"].get(ref, ref)
        name, _, number = ref.partition(":")
        found = [v for v in self.versions() if v.name == name and (not number or str(v.version) == number)]
        if not found:
            known = sorted({v.ref for v in self.versions()} | set(index["aliases"]))
            raise ValueError(f"no model {ref!r} in {self.root}; registered: {known or 'none'}")
        return max(found, key=lambda v: v.version)

    def folder(self, ref: str) -> Path:
        return self.root / self.get(ref).folder

    def register(
        self, source: str | Path, name: str, parent: str = "", data: str = "", commit: str = "", metrics=None
    ) -> ModelVersion:
        """Copy the model folder ``source`` in as the next version of ``name``."""
        source = Path(source)
        if not NAME.match(name):
            raise ValueError(f"model name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'")
        if not (source / CONFIG_NAME).is_file():
            raise ValueError(f"{source} is not a model folder: {CONFIG_NAME} is missing")
        if parent:
            parent = self.get(parent).ref
        with self._lock:
            index = self._read()
            number = 1 + max((v["version"] for v in index["versions"] if v["name"] == name), default=0)
            relative = Path("models") / name / f"v{number}"
            atomic_directory(self.root / relative, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
            version = ModelVersion(
                name=name,
                version=number,
                sha256=weights_sha256(self.root / relative),
                folder=str(relative),
                created=time.time(),
                parent=parent,
                data=data,
                commit=commit,
                metrics=dict(metrics or {}),
            )
            index = {**index, "versions": [*index["versions"], asdict(version)]}
            self._write(index)
        return version

    def alias(self, alias: str, ref: str) -> ModelVersion:
        """Point ``alias`` at ``ref`` (remembering where it pointed, for :meth:`rollback`)."""
        if not NAME.match(alias) or ":" in alias:
            raise ValueError(f"alias {alias!r}: use a word of lower-case letters, digits, '.', '_' or '-'")
        target = self.get(ref)
        if any(v.name == alias for v in self.versions()):
            raise ValueError(f"alias {alias!r} is also a model name; choose another")
        with self._lock:
            index = self._read()
            history = index["alias_history"].get(alias, [])
            if alias in index["aliases"]:
                history = [*history, index["aliases"][alias]]
            index = {
                **index,
                "aliases": {**index["aliases"], alias: target.ref},
                "alias_history": {**index["alias_history"], alias: history},
            }
            self._write(index)
        return target

    def rollback(self, alias: str) -> ModelVersion:
        """Point ``alias`` back where it pointed before its last move."""
        with self._lock:
            index = self._read()
            history = index["alias_history"].get(alias, [])
            if not history:
                raise ValueError(f"alias {alias!r} has no earlier version to roll back to")
            index = {
                **index,
                "aliases": {**index["aliases"], alias: history[-1]},
                "alias_history": {**index["alias_history"], alias: history[:-1]},
            }
            self._write(index)
        return self.get(alias)
