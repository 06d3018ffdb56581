"""This node's id: part of every spool and store file name, so many nodes can
write the same partitions without coordination."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from .config.keys import NODE_ID_PATTERN
from .errors import ConfigError

NODE_ID_FILE = "node_id"


def resolve_node_id(configured: str, data_dir: Path) -> str:
    """Return ``configured`` unless it is ``"auto"``; then the id kept in
    ``<data_dir>/node_id``, created on first use as ``<host name>-<6 hex>``."""
    if configured != "auto":
        return configured
    path = data_dir / NODE_ID_FILE
    existing = _read(path)
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    import secrets

    candidate = f"{_host_part()}-{secrets.token_hex(3)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another process of this node won the race: use its id
        return _read(path) or candidate
    with os.fdopen(fd, "w") as handle:
        handle.write(candidate + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return candidate


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not re.fullmatch(NODE_ID_PATTERN, text):
        raise ConfigError(f"{path} holds {text[:80]!r}, which is not a valid node id; delete the file "
                          f"to make a new one or set node_id in the config", key="node_id")
    return text


def _host_part() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]).strip("-")
    return (host or "node")[:40]
