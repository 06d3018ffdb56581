"""Make real third-party plugin distributions visible to importlib.metadata.

``make_dist`` writes ``<name>-<version>.dist-info`` (METADATA, entry_points.txt,
RECORD) and the plugin module into a directory that is then put on
``sys.path`` (or ``PYTHONPATH`` for subprocesses): exactly what ``pip
install`` leaves in site-packages, minus the copying.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_dist(site: Path, dist_name: str, module_name: str, source: str,
              entry_points: dict[str, str], version: str = "1.0") -> Path:
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module_name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[telemetry]\n{lines}")
    (info / "RECORD").write_text(f"{module_name}.py,,\n")
    return site
