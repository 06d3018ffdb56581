"""The one way small files are replaced: atomic, durable, mode 0644, errors propagate."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from telemetry_core import atomic_files
from telemetry_core.atomic_files import fsync_directory, write_bytes_atomically, write_json_atomically


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_are_readable_by_others_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_bytes_atomically(tmp_path / "cache" / "Histograms.json", b"{}")  # parents are created
        write_json_atomically(tmp_path / "state.json", {"b": 1, "a": 2})
    finally:
        os.umask(old)
    assert mode(tmp_path / "cache" / "Histograms.json") == 0o644
    assert mode(tmp_path / "state.json") == 0o644
    assert (tmp_path / "state.json").read_text() == '{"a": 2, "b": 1}'


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomically(target, {"version": 1})
    with pytest.raises(TypeError):
        write_json_atomically(target, {"version": object()})
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_directory_that_cannot_be_synced_is_an_error_not_a_silent_loss(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")  # the old revision-cache helper returned quietly here
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(tmp_path / "file")

    def refuse(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic_files.os, "fsync", refuse)
    with pytest.raises(OSError, match="Input/output error"):
        write_bytes_atomically(tmp_path / "x", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_without_durability_nothing_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int) -> None:
        raise AssertionError("fsync called")

    monkeypatch.setattr(atomic_files.os, "fsync", refuse)
    write_json_atomically(tmp_path / "edge.json", {"accepted": 1}, durable=False)
    assert json.loads((tmp_path / "edge.json").read_text()) == {"accepted": 1}
