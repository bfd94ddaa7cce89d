"""Atomic writes: the old or the new content, never a mix; no temp files left; the usual
permissions (0666 less the umask), not a temp file's private 0600."""

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from saescope import atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def test_bytes_replace_the_old_content_with_the_usual_mode(tmp_path, umask_022):
    path = tmp_path / "sub" / "f.txt"
    atomic.atomic_write_bytes(path, b"old")
    atomic.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == umask_022
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_tensors_are_written_whole_with_the_usual_mode(tmp_path, umask_022):
    path = tmp_path / "t.safetensors"
    atomic.atomic_save_tensors(path, {"a": torch.arange(6).view(2, 3).t()}, {"k": "v"})
    assert torch.equal(load_file(path)["a"], torch.arange(6).view(2, 3).t())
    assert _mode(path) == umask_022 and len(list(tmp_path.iterdir())) == 1


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    atomic.atomic_save_tensors(path, {"a": torch.ones(3)}, {})

    def broken(tensors, filename, metadata):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_save_tensors(path, {"a": torch.zeros(3)}, {})
    assert torch.equal(load_file(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
