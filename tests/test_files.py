"""Atomic writes: all or nothing, with ordinary permissions."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from fractalflow.files import atomic_directory, atomic_path, atomic_write_text


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_folders_get_the_permissions_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_directory(tmp_path / "folder", lambda d: save_file({"w": torch.zeros(1)}, d / "w.safetensors"))
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o644
    assert mode(tmp_path / "folder") == 0o755
    assert mode(tmp_path / "folder" / "w.safetensors") == 0o644  # safetensors itself writes 0600


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_failed_folder_build_leaves_the_old_folder(tmp_path):
    atomic_directory(tmp_path / "model", lambda d: (d / "v1").write_text("1"))

    def broken(folder):
        (folder / "v2").write_text("2")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_directory(tmp_path / "model", broken)
    assert os.listdir(tmp_path / "model") == ["v1"] and os.listdir(tmp_path) == ["model"]
