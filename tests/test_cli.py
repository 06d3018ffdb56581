"""The telemetry command line, run as a user runs it."""

from __future__ import annotations

import importlib
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from telemetry_core.catalog import hook_descriptions
from telemetry_core.cli import cli
from telemetry_core.plugins import BUILTIN_COMMANDS, DEFAULT_PLUGINS, load_plugins

from plugin_dists import make_dist

REPO = Path(__file__).resolve().parent.parent


def run_cli(args, env=None, timeout=60, **kwargs):
    command = [str(Path(sys.executable).parent / "telemetry"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "plugins.yaml"
    # port 0: the built-in edge service of `telemetry run` must not need a fixed port here
    path.write_text(f"data_dir: {tmp_path / 'data'}\nnode_id: test-node\nreceive:\n  port: 0\n  workers: 1\n")
    return path


SERVICE_PLUGIN = """
    import threading, time
    from pathlib import Path
    from telemetry_core import hookimpl

    class Beacon:
        name = "beacon"
        def __init__(self, path, crash):
            self.path, self.crash, self.stopped = Path(path), crash, False
        def start(self):
            self.started = time.monotonic()
            self.path.write_text("started\\n")
        def stop(self, timeout):
            self.path.write_text(self.path.read_text() + "stopped\\n")
        def failed(self):
            if self.crash and time.monotonic() - self.started > 0.3:
                return "beacon lost its light"
            return None

    @hookimpl
    def telemetry_services(engine):
        import os
        return [Beacon(os.environ["BEACON_FILE"], os.environ.get("BEACON_CRASH") == "1")]
"""


def service_site(tmp_path):
    return make_dist(tmp_path / "site", "telemetry-beacon", "tp_beacon", SERVICE_PLUGIN, {"beacon": "tp_beacon"})


def test_help_of_every_command_is_useful():
    runner = CliRunner()
    for command in (["--help"], ["run", "--help"], ["plugins", "--help"], ["hooks", "--help"],
                    ["config", "check", "--help"], ["config", "show", "--help"], ["metrics", "--help"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, command
        assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def test_hooks_lists_every_spec_with_its_summary():
    result = CliRunner().invoke(cli, ["hooks"])
    for hook in hook_descriptions():
        assert hook.signature in result.output
        assert hook.summary in result.output
    only = CliRunner().invoke(cli, ["hooks", "--stage", "compress"]).output
    assert "telemetry_compress_codec(name)" in only and "telemetry_receive" not in only


def test_plugins_lists_the_builtins(config):
    result = run_cli(["plugins", "--config", str(config)])
    assert result.returncode == 0, result.stderr
    assert "compress.codecs  [builtin, telemetry-core 0.1.0]  loaded" in result.stdout
    assert "    telemetry_compress_codec" in result.stdout
    rows = json.loads(run_cli(["plugins", "--config", str(config), "--json"]).stdout)
    assert {"compress.codecs", "metrics.graphite"} <= {row["name"] for row in rows}


def test_config_check_ok_and_failing(config, tmp_path):
    result = run_cli(["config", "check", "--config", str(config)])
    assert result.returncode == 0 and result.stdout.startswith(f"ok: {config} is valid")
    bad = tmp_path / "bad.yaml"
    bad.write_text("receive:\n  port: high\ncompress:\n  codec: 7\n")
    result = run_cli(["config", "check", "--config", str(bad)])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {bad}: receive.port: has type string (expected an integer from 0 to 65535)",
        f"error: {bad}: compress.codec: has type integer (expected a string matching [a-z][a-z0-9_]*)",
    ]
    assert "Traceback" not in result.stderr


def test_config_check_reports_a_broken_schema_file(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"version": 1, "dimensions": [{"field_name": "x", "allowed_values": 5}]}')
    config = tmp_path / "c.yaml"
    config.write_text(f"schema: {schema}\ndata_dir: {tmp_path}\n")
    result = run_cli(["config", "check", "--config", str(config)])
    assert result.returncode == 2 and "allowed_values must be" in result.stderr


def test_config_check_missing_file():
    result = run_cli(["config", "check", "--config", "/nonexistent/plugins.yaml"])
    assert result.returncode == 2
    assert result.stderr == "error: /nonexistent/plugins.yaml: config file not found; pass an existing file to --config\n"


def test_config_show_prints_defaults_and_hides_secrets(config):
    result = run_cli(["config", "show", "--config", str(config), "--set", "dedup.redis_url=${URL}"],
                     env={"URL": "redis://:sekrit@db:6379/0"})
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["dedup"]["redis_url"] == "***"
    assert {key: shown["receive"][key] for key in ("host", "port", "workers", "max_body_bytes")} == {
        "host": "127.0.0.1", "port": 0, "workers": 1, "max_body_bytes": 1048576}
    assert "sekrit" not in result.stdout + result.stderr
    as_json = json.loads(run_cli(["config", "show", "--config", str(config), "--format", "json"]).stdout)
    assert as_json["compress"] == {"codec": "zstd", "level": 0}


def test_broken_plugin_stops_a_command_with_one_line(tmp_path, config):
    site = make_dist(tmp_path / "site", "telemetry-broken", "tp_broken_cli", "import nope_nope\n",
                     {"broken": "tp_broken_cli"}, "0.9")
    result = run_cli(["plugins", "--config", str(config)], env={"PYTHONPATH": str(site)})
    assert result.returncode == 3
    assert result.stderr == ("error: plugin 'broken' (distribution telemetry-broken 0.9) failed to load: "
                             "ModuleNotFoundError: No module named 'nope_nope'\n")
    skipped = run_cli(["plugins", "--config", str(config), "--set", "plugins.skip_broken=true"],
                      env={"PYTHONPATH": str(site)})
    assert skipped.returncode == 0
    assert "broken  [entrypoint, telemetry-broken 0.9]  broken" in skipped.stdout


def test_run_starts_and_stops_services_on_sigterm(tmp_path, config):
    beacon = tmp_path / "beacon.txt"
    env = {"PYTHONPATH": str(service_site(tmp_path)), "BEACON_FILE": str(beacon)}
    process = subprocess.Popen([str(Path(sys.executable).parent / "telemetry"), "run", "--config", str(config)],
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not beacon.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert beacon.read_text() == "started\n"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert beacon.read_text() == "started\nstopped\n"
    assert "started beacon" in stderr and "stopped beacon" in stderr
    assert "[test-node]" in stderr  # the default log format carries the node id


def test_run_restarts_a_dying_service_then_gives_up_on_a_crash_loop_with_exit_4(tmp_path, config):
    beacon = tmp_path / "beacon.txt"
    env = {"PYTHONPATH": str(service_site(tmp_path)), "BEACON_FILE": str(beacon), "BEACON_CRASH": "1"}
    result = run_cli(["run", "--config", str(config), "--set", "supervise.backoff_initial_s=0.1",
                      "--set", "supervise.crash_loop_restarts=2"], env=env)
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("service beacon failed after") == 2
    assert result.stderr.count("restarted beacon") == 2
    assert ("service beacon failed: beacon lost its light; it was restarted 2 times within 60 s "
            "(supervise.crash_loop_restarts), giving up; stopping") in result.stderr
    assert beacon.read_text() == "started\nstopped\n"
    shown = json.loads(run_cli(["metrics", "--config", str(config), "--command", "run"]).stdout)
    assert shown["run"]["stats"]["services"]["beacon"] == {"restarts": 2, "up": 0}


def test_run_with_duration_profile_and_metrics_snapshot(tmp_path, config):
    beacon = tmp_path / "beacon.txt"
    profile = tmp_path / "run.prof"
    env = {"PYTHONPATH": str(service_site(tmp_path)), "BEACON_FILE": str(beacon)}
    result = run_cli(["run", "--config", str(config), "--duration", "0.5", "--profile", str(profile)], env=env)
    assert result.returncode == 0, result.stderr
    assert pstats.Stats(str(profile)).total_calls > 0
    shown = run_cli(["metrics", "--config", str(config)])
    document = json.loads(shown.stdout)["run"]
    assert document["stats"]["hooks"]["telemetry_services"]["calls"] == 1
    prometheus = run_cli(["metrics", "--config", str(config), "--format", "prometheus"]).stdout
    assert 'telemetry_hook_calls_total{command="run",hook="telemetry_services"} 1' in prometheus


def builtin_service_plugins():
    """Built-in plugins that contribute services to `telemetry run` (the edge, the processor ...)."""
    return [name for name, target in DEFAULT_PLUGINS
            if hasattr(importlib.import_module(target.split(":")[0]), "telemetry_services")]


def test_run_with_no_services_says_so(config):
    disabled = ", ".join(builtin_service_plugins())
    result = run_cli(["run", "--config", str(config), "--duration", "5", "--set", f"plugins.disabled=[{disabled}]"])
    assert result.returncode == 0
    assert "nothing to run" in result.stderr


def test_metrics_without_snapshots(config):
    result = run_cli(["metrics", "--config", str(config)])
    assert result.returncode == 1 and "no metrics snapshots" in result.stderr


def test_builtin_command_table_matches_what_the_builtins_register(pm):
    """``telemetry --help`` lists the built-ins' commands from BUILTIN_COMMANDS without importing them."""
    load_plugins(pm, entry_points=False)
    registered = {}
    for plugin in pm.get_plugins():
        if not hasattr(plugin, "telemetry_register_commands"):
            continue
        group = click.Group()
        plugin.telemetry_register_commands(cli=group)
        for name, command in group.commands.items():
            registered[name] = (pm.get_name(plugin), command.get_short_help_str(10 ** 6))
    assert registered == BUILTIN_COMMANDS


def test_help_lists_every_command_and_imports_no_builtin_plugin():
    script = ("import json, sys\nfrom click.testing import CliRunner\nfrom telemetry_core.cli import cli\n"
              "output = CliRunner().invoke(cli, ['--help'], terminal_width=300, max_content_width=300).output\n"
              "print(json.dumps([output, sorted(sys.modules)]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    listing, imported = json.loads(result.stdout)
    for name, (_plugin, summary) in BUILTIN_COMMANDS.items():
        assert f"  {name}  " in listing and summary in listing
    assert {target.partition(":")[0] for _name, target in DEFAULT_PLUGINS}.isdisjoint(imported)


def test_a_disabled_builtins_commands_are_not_offered(config):
    disabled = run_cli(["doctor", "--config", str(config), "--set", "plugins.disabled=[ops.doctor]"])
    assert disabled.returncode == 2 and "No such command 'doctor'" in disabled.stderr
    enabled = run_cli(["doctor", "--help", "--config", str(config)])
    assert enabled.returncode == 0 and "Check this node's health" in enabled.stdout


def test_version():
    assert run_cli(["--version"]).stdout.strip() == "telemetry, version 0.1.0"


def test_unknown_command_is_a_usage_error():
    result = run_cli(["frobnicate"])
    assert result.returncode == 2 and "No such command 'frobnicate'" in result.stderr
