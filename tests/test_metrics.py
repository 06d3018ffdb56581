"""Hook-call metrics: counts, errors and live percentiles, per hook and per plugin."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest
from greplin import scales

from telemetry_core import hookimpl
from telemetry_core.metrics.stats import (LatencyStat, LiveLatency, add_families, percentile, read_snapshots,
                                          render_families, snapshot, status_json, write_snapshot)
from telemetry_core.records import Rejection, Submission


def exposition(tree):
    """The Prometheus text of one stats tree, as ``/metrics`` and ``telemetry metrics`` build it."""
    families = {}
    add_families(families, tree, {})
    return render_families(families)


def submission(channel="release"):
    return Submission(id="i", path="p", body=b"", received_at_ms=0, dims={"appUpdateChannel": channel})


class Slow:
    def __init__(self, delay):
        self.delay = delay

    @hookimpl
    def telemetry_receive_validate(self, submission):
        time.sleep(self.delay)
        if submission.dims["appUpdateChannel"] == "beta":
            raise RuntimeError("validator crashed")
        return None


def test_calls_errors_and_latency_per_hook_calls_and_errors_per_plugin(pm, make_engine):
    pm.register(Slow(0.002), name="slow")
    engine = make_engine()
    for _ in range(3):
        engine.validate_submission(submission=submission())
    with pytest.raises(RuntimeError):
        engine.validate_submission(submission=submission("beta"))
    stats = snapshot()
    hook = stats["hooks"]["telemetry_receive_validate"]
    assert hook["calls"] == 4 and hook["errors"] == 1
    assert hook["latency"]["count"] == 4
    assert 0.002 <= hook["latency"]["median"] < 0.5
    per_plugin = stats["plugins"]["slow"]["telemetry_receive_validate"]
    assert per_plugin["calls"] == 4 and per_plugin["errors"] == 1


def test_errors_are_attributed_to_the_plugin_that_raised(pm, make_engine):
    class Fine:
        @hookimpl
        def telemetry_receive_validate(self, submission):
            return None

    pm.register(Fine(), name="fine")
    pm.register(Slow(0), name="crashy")  # registered last: called first, raises
    engine = make_engine()
    with pytest.raises(RuntimeError):
        engine.validate_submission(submission=submission("beta"))
    plugins = snapshot()["plugins"]
    assert plugins["crashy"]["telemetry_receive_validate"]["errors"] == 1
    assert plugins["fine"]["telemetry_receive_validate"].get("errors", 0) == 0


def test_an_error_is_charged_to_the_instance_that_raised_when_instances_share_a_class(pm, make_engine):
    class Picky:
        def __init__(self, refuse):
            self.refuse = refuse

        @hookimpl
        def telemetry_receive_validate(self, submission):
            if submission.dims["appUpdateChannel"] == self.refuse:
                raise RuntimeError(f"{self.refuse} refused")

    pm.register(Picky("beta"), name="refuses_beta")  # called second
    pm.register(Picky("aurora"), name="refuses_aurora")  # called first
    engine = make_engine()
    with pytest.raises(RuntimeError, match="beta refused"):
        engine.validate_submission(submission=submission("beta"))
    with pytest.raises(RuntimeError, match="aurora refused"):
        engine.validate_submission(submission=submission("aurora"))
    plugins = snapshot()["plugins"]
    assert plugins["refuses_aurora"]["telemetry_receive_validate"] == {"calls": 2, "errors": 1}
    assert plugins["refuses_beta"]["telemetry_receive_validate"] == {"calls": 1, "errors": 1}


def test_plugins_registered_any_way_are_counted_and_pick_one_hooks_count_what_certainly_ran(pm, make_engine):
    class Paths:
        def __init__(self, answer):
            self.answer = answer

        @hookimpl
        def telemetry_receive_parse_path(self, path):
            return self.answer if path.startswith("/submit") else None

    class Fallback:
        @hookimpl(trylast=True)
        def telemetry_receive_parse_path(self, path):
            return Rejection(404, "unknown_path", "fallback")

    engine = make_engine(Paths(Rejection(400, "mine", "answered first")), Fallback())  # pm.register, no _Loader
    engine.parse_path(path="/submit/x")  # answered by the first candidate; the fallback never ran
    engine.parse_path(path="/other")  # the first candidate said None, the fallback answered
    plugins = snapshot()["plugins"]
    names = {type(p).__name__: pm.get_name(p) for p in pm.get_plugins()}
    first = plugins[names["Paths"]]["telemetry_receive_parse_path"]
    fallback = plugins[names["Fallback"]]["telemetry_receive_parse_path"]
    assert first["calls"] == 2  # it ran both times
    assert fallback["calls"] == 0  # pluggy does not say who answered: only what certainly ran is counted


def test_an_error_in_a_nested_hook_call_is_attributed_in_both_hooks(pm, make_engine):
    class Outer:
        engine = None

        @hookimpl
        def telemetry_receive_enrich(self, submission):
            self.engine.validate_submission(submission=submission)

    outer = Outer()
    pm.register(outer, name="outer")
    pm.register(Slow(0), name="inner")
    engine = make_engine()
    outer.engine = engine
    with pytest.raises(RuntimeError):
        engine.enrich(submission=submission("beta"))
    plugins = snapshot()["plugins"]
    assert plugins["outer"]["telemetry_receive_enrich"] == {"calls": 1, "errors": 1}
    assert plugins["inner"]["telemetry_receive_validate"] == {"calls": 1, "errors": 1}


def test_exported_percentiles_follow_new_calls(pm, make_engine):
    """scales' PmfStat would keep showing the first refresh for 20 s; ours follow every read."""
    slow = Slow(0.0)
    pm.register(slow, name="slow")
    engine = make_engine()
    for _ in range(5):
        engine.validate_submission(submission=submission())
    fast_p99 = snapshot()["hooks"]["telemetry_receive_validate"]["latency"]["99percentile"]
    slow.delay = 0.02
    for _ in range(50):
        engine.validate_submission(submission=submission())
    later = snapshot()["hooks"]["telemetry_receive_validate"]["latency"]
    assert later["count"] == 55
    assert later["99percentile"] >= 0.02 > fast_p99
    text = exposition(snapshot())
    p99 = re.search(r'telemetry_hook_latency_seconds\{hook="telemetry_receive_validate",quantile="0.99"\} (\S+)', text)
    assert float(p99.group(1)) >= 0.02


def test_nested_hook_calls_each_get_their_own_latency(pm, make_engine):
    class Outer:
        def __init__(self):
            self.engine = None

        @hookimpl
        def telemetry_receive_enrich(self, submission):
            time.sleep(0.01)
            self.engine.validate_submission(submission=submission)  # a hook calling a hook

    class Inner:
        @hookimpl
        def telemetry_receive_validate(self, submission):
            time.sleep(0.03)

    outer = Outer()
    engine = make_engine(outer, Inner())
    outer.engine = engine
    engine.enrich(submission=submission())
    hooks = snapshot()["hooks"]
    inner = hooks["telemetry_receive_validate"]["latency"]["max"]
    whole = hooks["telemetry_receive_enrich"]["latency"]["max"]
    assert 0.03 <= inner < whole
    assert whole >= 0.04


def test_monitor_keeps_start_times_apart_across_threads_and_tasks(pm, make_engine):
    class Sleeper:
        @hookimpl
        def telemetry_receive_validate(self, submission):
            time.sleep(0.01 if submission.id == "short" else 0.05)

    engine = make_engine(Sleeper())

    def call(item_id):
        engine.validate_submission(submission=Submission(id=item_id, path="", body=b"", received_at_ms=0))

    threads = [threading.Thread(target=call, args=(name,)) for name in ["long", "short"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def in_tasks():
        await asyncio.gather(*(asyncio.to_thread(call, "short") for _ in range(4)))

    asyncio.run(in_tasks())
    latency = snapshot()["hooks"]["telemetry_receive_validate"]["latency"]
    assert latency["count"] == 12
    assert 0.01 <= latency["min"] < 0.05 <= latency["max"] < 0.5


def test_latency_dict_is_scales_compatible():
    stats = scales.collection("/test_latency", LatencyStat("latency"))
    assert stats.latency["count"] == 0  # stats appear on first use
    assert json.loads(status_json())["test_latency"]["latency"] == {"count": 0, "sum": 0.0}
    for value in (1.0, 2.0, 3.0, 4.0):
        stats.latency = value
    shown = json.loads(status_json())["test_latency"]["latency"]
    assert shown["count"] == 4 and shown["min"] == 1.0 and shown["max"] == 4.0 and shown["median"] == 2.5
    assert dict(stats.latency)["mean"] == 2.5


def test_live_latency_window_and_totals():
    latency = LiveLatency(window=10)
    for value in range(100):
        latency.addValue(float(value))
    assert latency["count"] == 100 and latency["sum"] == sum(range(100))
    assert latency["min"] == 0 and latency["median"] == 94.5  # percentiles: last 10 samples


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert percentile([1.0, 2.0], 0.75) == 1.75
    assert percentile([7.0], 0.99) == 7.0


def parse_prometheus(text):
    """A strict reading of the text format: HELP/TYPE before samples, grouped families."""
    families, current = {}, None
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (\S+)$')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in families, f"family {name} appears twice"
            families[name] = kind
            current = name
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            match = sample.match(line)
            assert match, f"bad sample line {line!r}"
            assert match.group(1).startswith(current), f"{line!r} outside its family {current}"
            float(match.group(5).replace("Inf", "inf"))
    return families


def test_prometheus_exposition_is_well_formed(pm, make_engine):
    pm.register(Slow(0), name="slow")
    engine = make_engine()
    engine.validate_submission(submission=submission())
    with pytest.raises(RuntimeError):
        engine.validate_submission(submission=submission("beta"))
    scales.collection('/edge', scales.IntStat('accepted')).accepted = 5
    text = exposition(snapshot())
    families = parse_prometheus(text)
    assert families["telemetry_hook_calls_total"] == "counter"
    assert families["telemetry_hook_latency_seconds"] == "summary"
    assert families["telemetry_plugin_hook_errors_total"] == "counter"
    assert 'telemetry_hook_calls_total{hook="telemetry_receive_validate"} 2' in text
    assert 'telemetry_hook_errors_total{hook="telemetry_receive_validate"} 1' in text
    assert 'telemetry_plugin_hook_errors_total{plugin="slow",hook="telemetry_receive_validate"} 1' in text
    assert "telemetry_edge_accepted 5" in text


def test_prometheus_labels_are_escaped():
    tree = {"hooks": {'we"ird\\hook\nname': {"calls": 1, "errors": 0, "latency": {"count": 0, "sum": 0}}}}
    text = exposition(tree)
    assert 'hook="we\\"ird\\\\hook\\nname"' in text
    parse_prometheus(text)


def test_snapshots_round_trip(tmp_path, pm, make_engine):
    engine = make_engine(Slow(0))
    engine.validate_submission(submission=submission())
    path = write_snapshot(tmp_path / "metrics", "process")
    (tmp_path / "metrics" / "broken.json").write_text("{not json")
    documents = read_snapshots(tmp_path / "metrics")
    good = [d for d in documents if "error" not in d]
    assert [d["command"] for d in good] == ["process"]
    assert good[0]["stats"]["hooks"]["telemetry_receive_validate"]["calls"] == 1
    assert any("unreadable snapshot" in d.get("error", "") for d in documents)
    assert path.name == "process.json"
