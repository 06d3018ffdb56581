"""On-disk state of the processor: the single-instance lock, the sequence
counter, and the phase of each claimed spool file.

A claimed spool file ``work/<name>`` has a work directory ``work/<name>.d/``
whose ``state.json`` records its phase:

``claimed`` → ``processed`` (work files and manifest written, fsynced) →
``compressed`` (compressed files and their checksums written) →
``published`` (every file and the manifest verified in the archive) →
the input is removed (or kept in ``spool/processed/``) and the work
directory deleted.

Every transition is an atomic rename of ``state.json``, made only after the
outputs of the phase are durable, so after a crash the processor resumes
each file at the last phase it completed, redoing only that phase's work.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...atomic_files import write_json_atomically
from ...errors import TelemetryError

PHASES = ("claimed", "processed", "compressed", "published")


class ProcessorLocked(TelemetryError):
    """Another processor already runs on this data directory."""


class InstanceLock:
    """An exclusive ``flock`` on ``state/<name>.lock``: released by the kernel
    when the process dies, so a crash never leaves a stale lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> "InstanceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ProcessorLocked(f"another processor (pid {holder}) is already running on "
                                      f"{self.path.parent.parent}; stop it first or use another data_dir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def next_seq(state_dir: Path) -> int:
    """Allocate this node's next sequence number (``state/seq``, under a lock)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "seq.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        path = state_dir / "seq"
        try:
            current = int(path.read_text().strip() or 0)
        except FileNotFoundError:
            current = 0
        except ValueError:
            raise TelemetryError(f"{path} is corrupted; set it to a number above every published seq") from None
        write_json_atomically(path, current + 1)
        return current + 1


@dataclass
class WorkState:
    """``state.json`` of one claimed spool file."""

    source: str
    seq: int
    phase: str = "claimed"
    attempts: int = 0
    outages: int = 0
    last_error: str = ""
    next_attempt_at: float = 0.0
    files: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "WorkState":
        document = json.loads(path.read_text())
        return cls(**{key: document[key] for key in cls.__dataclass_fields__ if key in document})

    def save(self, path: Path) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}")
        write_json_atomically(path, asdict(self))
