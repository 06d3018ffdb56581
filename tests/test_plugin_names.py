"""Plugin loading without holes: stable names, essential built-ins, plugin state per
engine, ``plugins.disabled`` honoured by every command, configured names checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from telemetry_core import hookimpl
from telemetry_core.config.loader import read_config
from telemetry_core.engine import Engine
from telemetry_core.errors import ConfigError
from telemetry_core.plugins import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS, load_plugins, make_plugin_manager
from telemetry_core.records import Submission

from plugin_dists import make_dist

PACKAGE = Path(__file__).resolve().parent.parent / "telemetry_core"
STAGES = ("receive", "store", "convert", "dedup", "compress", "reduce", "metrics", "ops")


def test_builtins_have_short_stable_names_by_stage():
    names = [name for name, _ in DEFAULT_PLUGINS]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z]+\.[a-z0-9_]+", name), name
        assert name.split(".")[0] in STAGES, name


def test_plugins_register_under_their_short_names(pm):
    infos = {info.name: info for info in load_plugins(pm, entry_points=False)}
    assert infos["receive.paths"].status == "loaded" and pm.get_plugin("receive.paths") is not None
    assert infos["compress.codecs"].hooks  # listed with the hooks it implements


def test_a_builtin_disabled_by_its_module_name_is_translated(pm, caplog):
    infos = {i.name: i for i in load_plugins(pm, disabled=["telemetry_core.compress.lzma_alone"],
                                             entry_points=False)}
    assert infos["compress.lzma"].status == "disabled"
    assert "the plugin's name is 'compress.lzma'" in caplog.text


@pytest.mark.parametrize("name", sorted(ESSENTIAL_PLUGINS))
def test_an_essential_builtin_cannot_be_disabled_alone(pm, name):
    with pytest.raises(ConfigError, match=rf"{re.escape(name)} is an essential built-in"):
        load_plugins(pm, disabled=[name], entry_points=False)


def test_an_essential_builtin_can_be_replaced(pm):
    class OtherPaths:
        @hookimpl
        def telemetry_receive_parse_path(self, path):
            return None

    pm.register(OtherPaths(), name="other-paths")
    infos = {i.name: i for i in load_plugins(pm, disabled=["receive.paths"], entry_points=False)}
    assert infos["receive.paths"].status == "disabled"


def test_two_engines_in_one_process_keep_their_own_receive_settings(tmp_path):
    def engine(**settings):
        pm = make_plugin_manager()
        load_plugins(pm, entry_points=False)
        return Engine.from_plugin_manager(pm, read_config(None, [f"data_dir={tmp_path}"] + [
            f"{key}={value}" for key, value in settings.items()]))

    small = engine(**{"receive.max_inflated_bytes": 1024, "receive.record_client_addr": "true"})
    large = engine()  # configured last: before, module globals made both engines use these settings
    import gzip
    body = gzip.compress(b" " * 4096)
    submission = lambda: Submission(id="x", path="", body=body, received_at_ms=0, encoding="gzip",  # noqa: E731
                                    peer="192.0.2.7")
    assert small.validate_submission(submission=submission()).reason == "inflated_too_large"
    assert large.validate_submission(submission=submission()) is None
    enriched = submission()
    small.enrich(submission=enriched)
    assert enriched.client_addr == "192.0.2.7"
    kept_private = submission()
    large.enrich(submission=kept_private)
    assert kept_private.client_addr is None


def test_no_code_outside_the_engine_calls_hooks_directly():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "engine.py" and path.parent == PACKAGE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.hook\.telemetry_|\bpm\.hook\b|\bpm\._\w", line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_no_plugin_imports_the_cli():
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.name != "cli.py" and re.search(r"from \.+cli import|telemetry_core\.cli import",
                                                         path.read_text())]
    assert offenders == []


# --------------------------------------------------------------------------- the command line

MARKER_PLUGIN = """
    import os
    from pathlib import Path
    from telemetry_core import hookimpl

    Path(os.environ["TP_MARKER"]).write_text("imported")  # only to see whether it was imported

    @hookimpl
    def telemetry_register_commands(cli):
        import click

        @cli.command("marker-command")
        def marker_command():
            click.echo("marker here")
"""

BROKEN_PLUGIN = """
    raise RuntimeError("this plugin is broken on purpose")
"""


def run_cli(args, site, tmp_path, timeout=120):
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TP_MARKER": str(tmp_path / "marker")}
    command = [str(Path(sys.executable).parent / "telemetry"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.fixture
def site(tmp_path):
    directory = tmp_path / "site"
    make_dist(directory, "telemetry-marker", "tp_marker_plugin", MARKER_PLUGIN, {"marker": "tp_marker_plugin"})
    return directory


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "plugins.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nnode_id: n1\n")
    return path


@pytest.mark.parametrize("args", [
    ["process", "--once"],
    ["reconcile"],
    ["retention", "sweep", "--dry-run"],
    ["config", "check"],
])
def test_a_disabled_plugin_is_never_imported_by_any_command(site, config, tmp_path, args):
    result = run_cli([*args, "--config", str(config), "--set", "plugins.disabled=[marker]"], site, tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert not (tmp_path / "marker").exists(), f"{args}: the disabled plugin was imported"


def test_the_same_plugin_is_imported_and_adds_its_command_when_enabled(site, config, tmp_path):
    result = run_cli(["marker-command", "--help"], site, tmp_path)
    assert result.returncode == 0 and (tmp_path / "marker").exists()
    disabled = run_cli(["marker-command", "--config", str(config), "--set", "plugins.disabled=[marker]"],
                       site, tmp_path)
    assert disabled.returncode == 2 and "No such command 'marker-command'" in disabled.stderr


def test_a_broken_plugin_is_reported_not_muted(tmp_path, config):
    site = tmp_path / "site"
    make_dist(site, "telemetry-broken", "tp_broken_plugin", BROKEN_PLUGIN, {"broken": "tp_broken_plugin"})
    result = run_cli(["--help"], site, tmp_path)
    assert result.returncode == 0 and "process" in result.stdout  # the others' commands are still there
    assert "plugin 'broken' (distribution telemetry-broken 1.0) failed to load" in result.stderr
    assert "its commands are not available" in result.stderr


@pytest.mark.parametrize("key, value, choices", [
    ("compress.codec", "brotli", "gz, gzip, lzma, lzma2, xz, zst, zstd"),
    ("dedup.backend", "memcached", "redis, sqlite, none"),
    ("store.publish.backend", "ftp", "local, s3"),
    ("reduce.executor", "flink", "local, spark"),
])
def test_config_check_refuses_a_name_no_plugin_answers(tmp_path, config, key, value, choices):
    result = run_cli(["config", "check", "--config", str(config), "--set", f"{key}={value}"], tmp_path, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: {key}: no plugin answers {value!r}; installed choices: {choices}"]


def test_every_command_refuses_an_unknown_name_before_it_starts(tmp_path, config):
    result = run_cli(["run", "--config", str(config), "--duration", "1", "--set", "compress.codec=brotli"],
                     tmp_path, tmp_path)
    assert result.returncode == 2 and "compress.codec: no plugin answers 'brotli'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_refuses_a_disabled_essential_builtin(tmp_path, config):
    result = run_cli(["config", "check", "--config", str(config), "--set", "plugins.disabled=[store.layout]"],
                     tmp_path, tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "store.layout is an essential built-in" in result.stderr
