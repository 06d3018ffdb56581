"""A real third-party distribution, installed with pip, found through its entry point.

The package is the worked example of docs/writing-plugins.md
(examples/plugins/telemetry-allowlist).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "plugins" / "telemetry-allowlist"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)],
                   check=True, capture_output=True, cwd=build, timeout=300)
    assert list(target.glob("telemetry_allowlist-1.0.0.dist-info"))
    return target


def run(args, site, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, **kwargs)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "plugins.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nplugins:\n  allowlist:\n    channels: [release]\n")
    return path


def test_installed_plugin_appears_with_its_hooks(installed, config):
    result = run([str(BIN / "telemetry"), "plugins", "--config", str(config), "--json"], installed)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["allowlist"]["distribution"] == "telemetry-allowlist"
    assert rows["allowlist"]["version"] == "1.0.0"
    assert rows["allowlist"]["hooks"] == ["telemetry_config_schema", "telemetry_configure",
                                          "telemetry_receive_validate", "telemetry_register_commands"]


def test_disabling_it_in_yaml_removes_it(installed, config):
    result = run([str(BIN / "telemetry"), "plugins", "--config", str(config), "--json",
                  "--set", "plugins.disabled=[allowlist]"], installed)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["allowlist"]["status"] == "disabled" and rows["allowlist"]["hooks"] == []


def test_its_config_section_is_validated(installed, config):
    result = run([str(BIN / "telemetry"), "config", "check", "--config", str(config),
                  "--set", "plugins.allowlist.channels=release"], installed)
    assert result.returncode == 2
    assert "plugins.allowlist.channels: has type string (expected a list of str)" in result.stderr


def test_its_command_and_its_validation_work(installed, config):
    shown = run([str(BIN / "telemetry"), "allowlist", "--config", str(config)], installed)
    assert shown.stdout.strip() == "release", shown.stderr
    script = textwrap.dedent(f"""
        from telemetry_core.engine import Engine
        from telemetry_core.records import Submission
        engine = Engine.from_config({str(config)!r}, configure_logs=False)
        for channel in ("release", "nightly"):
            item = Submission(id="i", path="p", body=b'{{"ver": 1}}', received_at_ms=0,
                              dims={{"appUpdateChannel": channel}})
            print(channel, engine.validate_submission(submission=item))
    """)
    result = run([sys.executable, "-c", script], installed)
    assert result.stdout.splitlines() == [
        "release None",
        "nightly Rejection(status=403, reason='channel_not_allowed', "
        "detail=\"update channel 'nightly' is not accepted here\")",
    ], result.stderr
