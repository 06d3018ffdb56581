"""Test data for the MapReduce tests: generated pings, sent through the real
processor into a real archive, with every expected answer computed here from
the pings themselves (never from the pipeline's own code).

Pings come in several reasons, channels, versions, build ids, operating
systems and days, gzip and plain, a few broken (they end in ``_invalid/``),
and use two Histograms.json revisions whose layouts of ``HISTOGRAM`` differ:
the real seeded ``a55c55edf302`` and a test revision ``0123456789ab`` in a
test seed directory.  Some sessions send two idle-dailies, or an idle-daily
and a saved-session, so the dedup ledger has superseded records.
"""

from __future__ import annotations

import collections
import gzip
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_helpers import processor_engine, uuid
from telemetry_core.engine import Engine
from telemetry_core.convert.spec import HistogramSpec
from telemetry_core.store.process.processor import Processor
from telemetry_core.convert.revisions import DEFAULT_SEED_DIR
from telemetry_core.store.spool.files import SpoolWriter

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "examples" / "jobs"
FILTERS = REPO / "examples" / "filters"
DAY_MS = 86_400_000
T0 = 1_378_771_200_000  # 2013-09-10 00:00 UTC
DAYS = ("20130910", "20130911", "20130912")
REAL_REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
TEST_REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/0123456789ab"
HISTOGRAM = "CACHE_DISK_SEARCH_2"
OTHER_HISTOGRAM = "A11Y_IATABLE_USAGE_FLAG"
#: HISTOGRAM in the test revision: linear, 1..100, 11 buckets (the real one is exponential 1..10000, 50).
TEST_DEFINITION = {"kind": "linear", "low": 1, "high": 100, "n_buckets": 11, "description": "test layout"}


@dataclass
class Ping:
    id: str
    reason: str
    channel: str
    version: str
    build: str
    os: str
    day: int
    revision: str
    values: dict[str, dict[str, int]]
    uptime: int
    gzip: bool = False
    broken: bool = False
    received_ms: int = 0

    @property
    def submission_date(self) -> str:
        return DAYS[self.day]

    def dims(self) -> tuple[str, ...]:
        return (self.reason, "Firefox", self.channel, self.version, self.build, self.submission_date)

    def body(self, specs: dict[str, HistogramSpec]) -> bytes:
        if self.broken:
            return b'{"ver": 1, "info": {"reason": "idle-daily"'  # truncated JSON
        spec = specs[self.revision]
        histograms = {}
        for name, values in self.values.items():
            layout = spec.layout(name)
            histograms[name] = {"range": [layout.low, layout.high], "bucket_count": layout.n_buckets,
                                "histogram_type": layout.histogram_type, "values": values,
                                "sum": sum(int(k) * v for k, v in values.items()),
                                "sum_squares_lo": 0, "sum_squares_hi": 0}
        payload = {"ver": 1, "info": {"reason": self.reason, "OS": self.os, "appName": "Firefox",
                                      "appVersion": self.version, "appUpdateChannel": self.channel,
                                      "appBuildID": self.build, "revision": self.revision, "locale": "en-US"},
                   "simpleMeasurements": {"uptime": self.uptime}, "histograms": histograms}
        data = json.dumps(payload).encode()
        return gzip.compress(data, mtime=0) if self.gzip else data

    def path(self) -> str:
        return f"{self.id}/{self.reason}/Firefox/{self.version}/{self.channel}/{self.build}"


@dataclass
class Dataset:
    """An archive made by the real processor from ``pings``, and how to configure an engine for it."""

    root: Path
    data_dir: Path
    archive: Path
    seed_dir: Path
    pings: list[Ping]
    specs: dict[str, HistogramSpec]
    extra: dict[str, Any] = field(default_factory=dict)

    def overrides(self, *more: str, data_dir: Path | None = None) -> list[str]:
        """``--set`` values for a MapReduce engine reading this archive (offline specs)."""
        return [f"data_dir={data_dir or self.data_dir}", "node_id=n1", "convert.histograms.server=null",
                f"convert.histograms.cache_dir={self.root / 'histogram_cache'}",
                f"convert.histograms.seed_dirs=[{DEFAULT_SEED_DIR}, {self.seed_dir}]",
                "metrics.snapshot=false", "reduce.progress=false", *more]

    def engine(self, *more: str, data_dir: Path | None = None) -> Engine:
        return Engine.from_config(None, self.overrides(*more, data_dir=data_dir), configure_logs=False)

    # ---- answers computed from the pings

    def stored(self) -> list[Ping]:
        return [p for p in self.pings if not p.broken]

    def live(self) -> list[Ping]:
        """The pings dedup keeps: per id, the saved-session, else the latest idle-daily."""
        best: dict[str, Ping] = {}
        for ping in self.stored():
            rank = (ping.reason == "saved-session", ping.received_ms)
            current = best.get(ping.id)
            if current is None or rank > (current.reason == "saved-session", current.received_ms):
                best[ping.id] = ping
        return list(best.values())

    def count_by_day(self, pings: list[Ping] | None = None) -> dict[str, int]:
        return dict(collections.Counter(p.submission_date for p in (pings or self.stored())))

    def dimensions(self, pings: list[Ping] | None = None) -> dict[str, int]:
        return dict(collections.Counter("/".join(p.dims()) for p in (pings or self.stored())))

    def os_distribution(self, pings: list[Ping] | None = None) -> dict[str, int]:
        return dict(collections.Counter(f"{p.channel}/{p.os}" for p in (pings or self.stored())))

    def histogram_totals(self, pings: list[Ping] | None = None) -> dict[str, int]:
        totals: collections.Counter[str] = collections.Counter()
        for ping in pings or self.stored():
            for name, values in ping.values.items():
                for bound, count in values.items():
                    if count:
                        totals[f"{name}[{bound}]"] += count
        return dict(totals)


def read_output(path: Path) -> dict[str, str]:
    """An output file as ``{key: value}`` (keys must be unique)."""
    result: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, value = line.split("\t")
        assert key not in result, f"key {key} appears twice in {path}"
        result[key] = value
    return result


def as_ints(output: dict[str, str]) -> dict[str, int]:
    return {key: int(value) for key, value in output.items()}


def _seed(root: Path) -> tuple[Path, dict[str, HistogramSpec]]:
    seed = root / "seed"
    real = DEFAULT_SEED_DIR / "releases" / "mozilla-release" / "a55c55edf302" / "Histograms.json"
    definitions = json.loads(real.read_text())
    definitions[HISTOGRAM] = TEST_DEFINITION
    target = seed / "releases" / "mozilla-release" / "0123456789ab" / "Histograms.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(definitions))
    specs = {REAL_REVISION: HistogramSpec.from_json(real.read_bytes()),
             TEST_REVISION: HistogramSpec.from_json(target.read_bytes())}
    return seed, specs


def _values(rng: random.Random, spec: HistogramSpec, name: str) -> dict[str, int]:
    bounds = spec.bounds(name)
    chosen = rng.sample(bounds, k=min(4, len(bounds)))
    return {str(bound): rng.randint(0, 20) for bound in chosen}


def generate(rng: random.Random, specs: dict[str, HistogramSpec], count: int) -> list[Ping]:
    """``count`` unique pings plus dedup sessions and a few broken ones."""
    channels = {"release": "23.0.1", "beta": "24.0", "aurora": "25.0a2", "nightly": "26.0a1"}
    pings = []

    def make(index: int, reason: str, day: int, **extra: Any) -> Ping:
        channel = extra.pop("channel", rng.choice(sorted(channels)))
        revision = extra.pop("revision", rng.choice([REAL_REVISION, TEST_REVISION]))
        values = {HISTOGRAM: _values(rng, specs[revision], HISTOGRAM),
                  OTHER_HISTOGRAM: _values(rng, specs[revision], OTHER_HISTOGRAM)}
        return Ping(id=uuid(index), reason=reason, channel=channel, version=channels[channel],
                    build=rng.choice(["20130814063812", "20130901030201", "20130910030205"]),
                    os=rng.choice(["WINNT", "WINNT", "Darwin", "Linux"]), day=day, revision=revision,
                    values=values, uptime=rng.randint(1, 10_000), gzip=rng.random() < 0.5, **extra)

    for index in range(count):
        pings.append(make(index, rng.choice(["idle-daily", "saved-session"]), rng.randrange(len(DAYS))))
    for index in range(count, count + 6):  # two idle-dailies: the later one is live
        first = make(index, "idle-daily", 0)
        pings += [first, make(index, "idle-daily", 1, channel=first.channel)]
    for index in range(count + 6, count + 10):  # idle-daily then saved-session: the saved-session is live
        first = make(index, "idle-daily", 0)
        pings += [first, make(index, "saved-session", 2, channel=first.channel)]
    for index in range(count + 10, count + 13):
        pings.append(make(index, "idle-daily", 1, broken=True))
    for number, ping in enumerate(pings):
        ping.received_ms = T0 + ping.day * DAY_MS + 1000 + number
    return pings


_CACHE: dict[str, Any] = {}


def build_dataset(root: Path, *, count: int = 90, seed: int = 7) -> Dataset:
    """Generate pings, spool them (one spool file per day), run the processor, publish."""
    key = f"{root}:{count}:{seed}"
    if key in _CACHE:
        return _CACHE[key]
    seed_dir, specs = _seed(root)
    pings = generate(random.Random(seed), specs, count)
    data_dir = root / "data"
    for day in range(len(DAYS)):
        writer = SpoolWriter(data_dir / "spool", "n1")
        for ping in sorted((p for p in pings if p.day == day), key=lambda p: p.received_ms):
            writer.append(f"/submit/telemetry/{ping.path()}", ping.body(specs), timestamp_ms=ping.received_ms)
        writer.close()
    dataset = Dataset(root=root, data_dir=data_dir, archive=data_dir / "archive", seed_dir=seed_dir, pings=pings,
                      specs=specs)
    engine = processor_engine(data_dir, overrides=dataset.overrides()[1:])
    processor = Processor(engine)
    summary = processor.run_once()
    processor.close()
    assert not summary.failed_files, summary
    assert summary.records_valid == len(dataset.stored()), summary
    shutil.rmtree(root / "histogram_cache", ignore_errors=True)
    _CACHE[key] = dataset
    return dataset


def archive_files(archive: Path) -> list[Path]:
    return sorted(p for p in archive.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- unified pings

#: Unified ping types the generator sends; main and saved-session carry histograms.
UNIFIED_TYPES = ("main", "main", "saved-session", "activation", "deletion")


@dataclass
class UnifiedDataset:
    """An archive of unified (version 4) pings and a few classic ones, made by the real processor."""

    data_dir: Path
    pings: list[tuple[str, str, bool]]  # (type, channel, unified)
    dataset: Dataset

    def engine(self) -> Engine:
        return self.dataset.engine()

    def unified_counts(self) -> dict[str, int]:
        return dict(collections.Counter(f"{ping_type}/{channel}" for ping_type, channel, unified in self.pings
                                        if unified))


def unified_body(rng: random.Random, spec: HistogramSpec, ping_type: str, channel: str, version: str,
                 build: str) -> dict[str, Any]:
    """A unified ping as Firefox 38+ sent it (only the fields conversion reads, plus a few)."""
    ping: dict[str, Any] = {
        "type": ping_type, "id": "x", "creationDate": "2015-03-10T16:34:09.245Z", "version": 4,
        "clientId": "93fb0031-ccac-c84a-adae-1cc118ec86cb",
        "application": {"architecture": "x86-64", "buildId": build, "name": "Firefox", "version": version,
                        "vendor": "Mozilla", "platformVersion": version, "xpcomAbi": "x86_64-gcc3",
                        "channel": channel},
        "payload": {"ver": 4, "info": {"reason": ping_type}},
    }
    if ping_type in ("main", "saved-session"):
        layout = spec.layout(HISTOGRAM)
        values = _values(rng, spec, HISTOGRAM)
        ping["payload"]["info"]["revision"] = REAL_REVISION
        ping["payload"]["histograms"] = {HISTOGRAM: {
            "range": [layout.low, layout.high], "bucket_count": layout.n_buckets,
            "histogram_type": layout.histogram_type, "values": values,
            "sum": sum(int(k) * v for k, v in values.items()), "log_sum": 0, "log_sum_squares": 0}}
        ping["environment"] = {"system": {"os": {"name": rng.choice(["Windows_NT", "Darwin", "Linux"])}}}
    return ping


def build_unified_dataset(root: Path, *, count: int = 40, seed: int = 11) -> UnifiedDataset:
    """Unified pings of every type on every channel (and a few classic ones the job must skip),
    spooled with their Bagheera paths and processed by the real processor."""
    key = f"unified:{root}:{count}:{seed}"
    if key in _CACHE:
        return _CACHE[key]
    rng = random.Random(seed)
    seed_dir, specs = _seed(root)
    spec = specs[REAL_REVISION]
    channels = {"release": "38.0", "beta": "39.0", "aurora": "40.0a2", "nightly": "41.0a1"}
    data_dir = root / "data"
    writer = SpoolWriter(data_dir / "spool", "n1")
    pings = []
    for index in range(count):
        ping_type, channel = rng.choice(UNIFIED_TYPES), rng.choice(sorted(channels))
        build = rng.choice(["20150510030201", "20150601030201"])
        body = json.dumps(unified_body(rng, spec, ping_type, channel, channels[channel], build)).encode()
        writer.append(f"/submit/telemetry/{uuid(index)}/{ping_type}/Firefox/{channels[channel]}/{channel}/{build}",
                      gzip.compress(body, mtime=0) if index % 2 else body, timestamp_ms=T0 + index)
        pings.append((ping_type, channel, True))
    classic = [p for p in generate(rng, specs, 6) if not p.broken][:5]
    for ping in classic:
        ping.id = uuid(10_000 + classic.index(ping))
        writer.append(f"/submit/telemetry/{ping.path()}", ping.body(specs), timestamp_ms=T0 + 5000)
        pings.append((ping.reason, ping.channel, False))
    writer.close()
    dataset = Dataset(root=root, data_dir=data_dir, archive=data_dir / "archive", seed_dir=seed_dir, pings=[],
                      specs=specs)
    processor = Processor(processor_engine(data_dir, overrides=dataset.overrides()[1:]))
    summary = processor.run_once()
    processor.close()
    assert not summary.failed_files and summary.records_valid == len(pings), summary
    shutil.rmtree(root / "histogram_cache", ignore_errors=True)
    unified = _CACHE[key] = UnifiedDataset(data_dir=data_dir, pings=pings, dataset=dataset)
    return unified
