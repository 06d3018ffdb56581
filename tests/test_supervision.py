"""``telemetry run`` under SIGKILL: every service is restarted, the node keeps answering, and every
acknowledged id is published exactly once; a crash loop ends the node with exit 4."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge_fixtures import DIMS, TELEMETRY, EdgeNode, fixture_ping, new_id, post
from test_process_crash import archived_ids

from telemetry_core.supervision import RestartPolicy, ServiceSupervisor

#: Seconds of SIGKILLs under load; one kill every KILL_EVERY_S seconds, rotating over the targets.
KILL_PHASE_S = 45.0
KILL_EVERY_S = 1.5
CLIENTS = 3


class Tally:
    """What the clients saw: ids acknowledged (2xx), and every answer counted by kind."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.answers: dict[str, int] = {}
        self.lock = threading.Lock()

    def count(self, kind: str) -> None:
        with self.lock:
            self.answers[kind] = self.answers.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.answers.values())

    @property
    def ok(self) -> int:
        return self.answers.get("2xx", 0)


def client(port: int, tally: Tally, stop: threading.Event) -> None:
    _, body = fixture_ping()
    while not stop.is_set():
        record_id = new_id()
        try:
            answer = post(port, f"/submit/telemetry/{record_id}/{DIMS}", body, {"Content-Encoding": "gzip"})
        except OSError as error:  # refused, reset: an unanswered request
            tally.count(type(error).__name__)
            time.sleep(0.05)
            continue
        if 200 <= answer.status < 300:
            tally.acked.append(record_id)
            tally.count("2xx")
        else:
            tally.count(str(answer.status))
        time.sleep(0.01)


def children(pid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every child of ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(child) for child in task.read_text().split()]
        except OSError:
            continue
        for child in pids:
            try:
                found.append((child, Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                continue
    return found


def targets(run_pid: int) -> dict[str, list[int]]:
    """The processes of a node by role: processor workers, the edge supervisor, edge workers."""
    roles: dict[str, list[int]] = {"processor worker": [], "edge supervisor": [], "edge worker": []}
    for pid, command in children(run_pid):
        if "multiprocessing.spawn" in command:
            roles["processor worker"].append(pid)
        elif "telemetry_core.receive.edge_process" in command:
            roles["edge supervisor"].append(pid)
            roles["edge worker"] += [child for child, line in children(pid) if "receive.worker" in line]
    return roles


def session_alive(pgid: int) -> list[int]:
    """Processes still in the node's process group (workers outlive a killed parent for a while)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_sigkill_of_every_service_under_load_keeps_the_node_up_and_loses_nothing(tmp_path):
    rng = random.Random(20140301)
    node = EdgeNode(tmp_path / "node", node_id="kill", overrides=[
        "receive.workers=2", "receive.spool.max_file_bytes=300000", "receive.spool.max_file_age_s=0.5",
        "compress.level=3", "process.poll_interval=0.05", "convert.histograms.server=null",
        f"convert.histograms.cache_dir={tmp_path / 'hc'}", "supervise.backoff_initial_s=0.2",
        "supervise.backoff_max_s=2",
        "supervise.crash_loop_restarts=100"]).start(command="run")
    run_pid = node.process.pid
    tally = Tally()
    stop = threading.Event()
    loads = [threading.Thread(target=client, args=(node.port, tally, stop), daemon=True) for _ in range(CLIENTS)]
    for load in loads:
        load.start()
    kills: dict[str, int] = {}
    order = ["processor worker", "edge worker", "edge supervisor"]
    try:
        deadline = time.monotonic() + KILL_PHASE_S
        turn = 0
        while time.monotonic() < deadline:
            time.sleep(KILL_EVERY_S * rng.uniform(0.6, 1.4))
            role = order[turn % len(order)]
            pids = targets(run_pid)[role]
            if not pids:
                continue  # still being restarted: try the next role
            turn += 1
            os.kill(rng.choice(pids), signal.SIGKILL)
            kills[role] = kills.get(role, 0) + 1
        time.sleep(3.0)  # the last restart
        assert node.process.poll() is None, node.log()[-5000:]
    finally:
        stop.set()
        for load in loads:
            load.join(timeout=30)
        code = node.stop(timeout=90)
    deadline = time.monotonic() + 60
    while session_alive(run_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_alive(run_pid) == []
    log = node.log()
    restarts = log.count("restarting it in")
    ratio = tally.ok / tally.total
    print(f"\nkill test: {sum(kills.values())} SIGKILLs {kills}; {tally.total} requests, {tally.ok} 2xx "
          f"({100 * ratio:.2f} %), answers {tally.answers}; {restarts} service restarts by telemetry run")
    for line in log.splitlines():
        if "failed after" in line:
            print("   ", line.split(" telemetry_core.supervision: ", 1)[-1])
    assert code == 0, log[-5000:]
    assert all(kills.get(role, 0) >= 4 for role in order), kills
    assert ratio >= 0.97, tally.answers
    assert restarts >= kills["processor worker"] + kills["edge supervisor"]
    assert "exited with signal SIGKILL" in log

    overrides = sum((["--set", o] for o in node.overrides), [])
    final = subprocess.run([TELEMETRY, "process", "--once", "--config", str(node.config)] + overrides,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    ids_file = tmp_path / "acked.txt"
    ids_file.write_text("\n".join(tally.acked) + "\n")
    check = subprocess.run([TELEMETRY, "reconcile", "--config", str(node.config), "--ids", str(ids_file)]
                           + overrides, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:]
    stored = archived_ids(node.data_dir)
    counts = {record_id: 0 for record_id in tally.acked}
    for record_id in stored:
        if record_id in counts:
            counts[record_id] += 1
    assert [i for i, c in counts.items() if c != 1] == []
    print(f"exactly once: {len(tally.acked)} acknowledged ids, {len(stored)} records published")

    snapshot = json.loads((node.data_dir / "metrics" / "run.json").read_text())
    services = snapshot["stats"]["services"]
    # every restart (a start that then failed too) is counted; a death just before the stop is logged,
    # not restarted
    restarted = {role: len(re.findall(pattern, log)) for role, pattern in (
        ("edge", r"restarted edge \(restart"), ("processor", r"restarted processor-\d+ \(restart"))}
    assert services["edge"]["restarts"] >= max(restarted["edge"], kills["edge supervisor"] - 1)
    assert sum(s["restarts"] for name, s in services.items() if name.startswith("processor-")) \
        >= max(restarted["processor"], kills["processor worker"] - 1)


class Flaky:
    """A service that dies ``deaths`` times, then stays up."""

    def __init__(self, name: str = "flaky", deaths: int = 1000) -> None:
        self.name, self.deaths, self.starts, self.stops = name, deaths, 0, 0

    def start(self) -> None:
        self.starts += 1

    def stop(self, timeout: float) -> None:
        self.stops += 1

    def failed(self) -> str | None:
        return "exited with signal SIGKILL" if self.starts <= self.deaths else None


def test_supervisor_restarts_with_doubling_back_off_and_counts():
    service = Flaky(deaths=3)
    supervisor = ServiceSupervisor([service], RestartPolicy(backoff_initial_s=1.0, backoff_max_s=30.0,
                                                            crash_loop_restarts=10, crash_loop_window_s=60.0))
    supervisor.start()
    now = 1000.0
    unit = supervisor.units[0]
    unit.started_at = now
    delays = []
    for _ in range(3):
        assert supervisor.check_once(now) is None
        delays.append(unit.restart_at - now)
        now = unit.restart_at
        supervisor.check_once(now)  # restarts it
    assert delays == [1.0, 2.0, 4.0]
    assert service.starts == 4 and service.stops == 3
    assert unit.stats.restarts == 3 and unit.stats.up == 1
    assert supervisor.check_once(now + 100) is None  # stays up now


def test_supervisor_gives_up_on_a_crash_loop():
    service = Flaky()
    supervisor = ServiceSupervisor([service], RestartPolicy(backoff_initial_s=0.1, backoff_max_s=1.0,
                                                            crash_loop_restarts=3, crash_loop_window_s=60.0))
    supervisor.start()
    now, reason = 0.0, None
    for _ in range(20):
        now += 2.0
        reason = supervisor.check_once(now)
        if reason:
            break
    assert reason and "restarted 3 times within 60 s" in reason and "crash_loop_restarts" in reason
    assert service.starts == 4


def test_a_service_whose_restart_raises_counts_as_dying_again():
    class RefusesRestart(Flaky):
        def start(self) -> None:
            super().start()
            if self.starts > 1:
                raise OSError("no space left on device")

    service = RefusesRestart(deaths=1)
    supervisor = ServiceSupervisor([service], RestartPolicy(backoff_initial_s=0.1, backoff_max_s=1.0,
                                                            crash_loop_restarts=3, crash_loop_window_s=60.0))
    supervisor.start()
    now, reason = 0.0, None
    while reason is None and now < 100:
        now += 0.5
        reason = supervisor.check_once(now)
    assert "could not start again: no space left on device" in reason


@pytest.mark.parametrize("command", [["config", "check"], ["run", "--duration", "5"]])
def test_a_config_the_processor_refuses_is_refused_before_anything_starts(tmp_path, command):
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nnode_id: refuse\nreceive:\n  port: 0\n  workers: 1\n"
                      "store:\n  publish:\n    backend: s3\n    bucket: telemetry-bucket\n"
                      "    kms_key_id: arn:aws:kms:us-east-1:1:key/x\n")
    result = subprocess.run([TELEMETRY, *command, "--config", str(config)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "kms_key_id needs encryption: aws:kms" in errors[0], result.stderr
    assert "started" not in result.stderr
