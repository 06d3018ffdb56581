"""The docs stay true: config keys, the worked plugin example, the README's commands."""

from __future__ import annotations

import re
from pathlib import Path

from telemetry_core.config.keys import CORE_SCHEMA
from telemetry_core.config.loader import read_config
from telemetry_core.engine import Engine
from telemetry_core.config.options import walk_options
from telemetry_core.plugins import make_plugin_manager
from telemetry_core.records import Submission

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def test_every_config_key_is_documented():
    text = (DOCS / "configuration.md").read_text()
    for key, _ in walk_options(CORE_SCHEMA):
        assert f"| `{key}` |" in text, f"docs/configuration.md lacks {key}"
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", text, flags=re.M))
    assert documented == {key for key, _ in walk_options(CORE_SCHEMA)}


def test_writing_plugins_embeds_the_example_verbatim():
    text = (DOCS / "writing-plugins.md").read_text()
    source = (REPO / "examples/plugins/telemetry-allowlist/telemetry_allowlist.py").read_text().strip()
    assert source in text


def test_writing_plugins_test_example_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples/plugins/telemetry-allowlist"))
    from telemetry_allowlist import ChannelAllowlist

    pm = make_plugin_manager()
    pm.register(ChannelAllowlist(), name="allowlist")
    engine = Engine.from_plugin_manager(pm, read_config(None, [
        f"data_dir={tmp_path}", "plugins.allowlist.channels=[release]"]))
    nightly = Submission(id="x", path="", body=b"{}", received_at_ms=0, dims={"appUpdateChannel": "nightly"})
    assert engine.validate_submission(submission=nightly).status == 403


def test_readme_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[3].startswith("python3 -m venv .venv && .venv/bin/pip install -e . -e plugins/telemetry-pdfjs && "
                               ".venv/bin/telemetry run --config plugins.yaml")
    assert lines[4].startswith("bash .ci/run")
    assert ".venv/bin/python -m pytest" in (REPO / ".ci" / "run").read_text()


def test_docs_links_resolve():
    for doc in [REPO / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_the_module_map_names_every_module_once():
    text = (DOCS / "architecture.md").read_text()
    section = text[text.index("## Module map"):]
    chunks = dict(re.findall(r"\*\*(?:`([a-z_]+)/`|Core)\*\*(.*?)(?=\n\*\*|\Z)", section, flags=re.S))
    package = REPO / "telemetry_core"
    for path in sorted(package.rglob("*.py")) + sorted(package.rglob("*.c")):
        relative = path.relative_to(package)
        if path.name == "__init__.py" and relative.parent != Path("."):
            continue  # a package is named by its heading
        chunk = chunks[relative.parts[0] if len(relative.parts) > 1 else ""]
        inner = "/".join(relative.parts[1:]) or relative.name
        count = len(re.findall(rf"`{re.escape(inner)}`", chunk)) or len(re.findall(rf"`{re.escape(path.name)}`", chunk))
        assert count == 1, f"docs/architecture.md's module map names {relative} {count} times"
