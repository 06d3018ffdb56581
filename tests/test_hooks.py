"""One test per hook spec, named test_hook_<spec name> (checked by test_hookspecs.py).

Each registers a small plugin on a fresh plugin manager and calls the hook
through the engine's typed methods, as pipeline code does.
"""

from __future__ import annotations

import io

import click
import pytest
from click.testing import CliRunner

from telemetry_core import hookimpl
from telemetry_core.errors import ConfigError, RecordError
from telemetry_core.interfaces import InputFile, JobContext, JobSpec, PublishedFile, Route
from telemetry_core.config.options import Option, Section
from telemetry_core.records import Decision, DedupKey, Record, Rejection, Submission, SubmissionPath


def submission(**changes) -> Submission:
    values = dict(id="0a1b2c3d-0000-4000-8000-000000000001", path="x", body=b"{}", received_at_ms=1,
                  dims={"appUpdateChannel": "release"})
    values.update(changes)
    return Submission(**values)


def record(**changes) -> Record:
    values = dict(id="0a1b2c3d-0000-4000-8000-000000000001", path="x", raw=b"{}", received_at_ms=1,
                  payload={"ver": 1, "info": {}, "histograms": {}})
    values.update(changes)
    return Record(**values)


class Batch:
    node_id, seq = "n1", 7

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def append(self, relative_path: str, data: bytes, records: int = 1) -> None:
        self.files[relative_path] = self.files.get(relative_path, b"") + data


def test_hook_telemetry_config_schema(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_config_schema(self):
            return {"sample": Section(fields={"rate": Option("float", 0.5, help="sampling rate", maximum=1)})}

    engine = make_engine(Plugin())
    assert engine.config.plugin_section("sample") == {"rate": 0.5}
    with pytest.raises(ConfigError, match=r"plugins.sample.rate: 2 is too large"):
        make_engine(**{"plugins.sample.rate": 2})


def test_hook_telemetry_config_choices(pm, tmp_path, caplog):
    from telemetry_core.config.loader import read_config
    from telemetry_core.engine import check_choices

    class Brotli:
        @hookimpl
        def telemetry_config_choices(self, key):
            return ["brotli"] if key == "compress.codec" else None

        @hookimpl
        def telemetry_compress_codec(self, name):
            return object() if name == "brotli" else None

    class Unlisted:  # a plugin written before the hook: answers the factory, names nothing
        @hookimpl
        def telemetry_reduce_executor(self, name, engine):
            return object() if name == "flink" else None

    from telemetry_core.engine import Engine
    pm.register(Brotli(), name="brotli")
    config = Engine.from_plugin_manager(pm, read_config(None, [f"data_dir={tmp_path}", "compress.codec=brotli",
                                                               "dedup.backend=none"])).config
    with pytest.raises(ConfigError, match="store.publish.backend: no plugin answers 'local'; installed choices: $"):
        check_choices(pm, config)  # only brotli is installed: the default 'local' publisher is missing
    pm.register(Unlisted(), name="unlisted")

    class Local:
        @hookimpl
        def telemetry_config_choices(self, key):
            return {"store.publish.backend": ["local"], "reduce.executor": ["local"]}.get(key)

    pm.register(Local(), name="local")
    config = Engine.from_plugin_manager(pm, read_config(None, [f"data_dir={tmp_path}", "compress.codec=brotli",
                                                               "dedup.backend=none",
                                                               "reduce.executor=flink"])).config
    check_choices(pm, config)  # brotli is listed; flink is answered by a plugin that lists nothing
    assert "reduce.executor: 'flink' is not listed by any plugin; unlisted answer" in caplog.text


def test_hook_telemetry_configure(make_engine):
    seen = []

    class Plugin:
        @hookimpl
        def telemetry_configure(self, config):
            seen.append(config.get("compress.level"))

    make_engine(Plugin(), **{"compress.level": 7})
    assert seen == [7]


def test_hook_telemetry_configure_can_refuse(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_configure(self, config):
            raise ConfigError("needs a bucket", key="store.publish.bucket")

    with pytest.raises(ConfigError, match="store.publish.bucket: needs a bucket"):
        make_engine(Plugin())


def test_hook_telemetry_startup(make_engine):
    calls = []

    class Plugin:
        @hookimpl
        def telemetry_startup(self, engine, command):
            calls.append((engine.node_id, command))

    engine = make_engine(Plugin(), node_id="edge-7")
    engine.startup(command="serve")
    assert calls == [("edge-7", "serve")]


def test_hook_telemetry_services(make_engine):
    class Service:
        name = "ticker"

    class First:
        @hookimpl
        def telemetry_services(self, engine):
            return [Service()]

    class Second:
        @hookimpl
        def telemetry_services(self, engine):
            return None

    services = make_engine(First(), Second()).services()
    assert [s.name for s in services] == ["ticker"]


def test_hook_telemetry_shutdown(make_engine):
    calls = []

    class Broken:
        @hookimpl
        def telemetry_shutdown(self, engine, command):
            calls.append("broken")
            raise RuntimeError("disk gone")

    class Fine:
        @hookimpl
        def telemetry_shutdown(self, engine, command):
            calls.append("fine")

    engine = make_engine(Fine(), Broken())
    failures = engine.shutdown(command="run")
    assert sorted(calls) == ["broken", "fine"]
    assert [str(f) for f in failures] == ["disk gone"]


def test_hook_telemetry_register_commands(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_register_commands(self, cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")

    group = click.Group()
    make_engine(Plugin()).register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from a plugin\n"


def test_hook_telemetry_receive_routes(make_engine):
    async def handler(request):
        return None

    class Plugin:
        @hookimpl
        def telemetry_receive_routes(self, engine):
            return [Route("GET", "/version", handler)]

    routes = make_engine(Plugin()).receive_routes()
    assert routes == [Route("GET", "/version", handler)]


def test_hook_telemetry_receive_parse_path(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_receive_parse_path(self, path):
            parts = path.split("/")
            if len(parts) != 2:
                return Rejection(400, "invalid_path", "expected <id>/<reason>")
            return SubmissionPath(parts[0], {"reason": parts[1]})

    engine = make_engine(Plugin())
    assert engine.parse_path(path="abc/idle-daily") == SubmissionPath("abc", {"reason": "idle-daily"})
    assert engine.parse_path(path="abc").reason == "invalid_path"


def test_hook_telemetry_receive_parse_path_unanswered_is_404(make_engine):
    assert make_engine().parse_path(path="anything").status == 404


def test_hook_telemetry_receive_enrich(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_receive_enrich(self, submission):
            submission.client_addr = submission.headers.get("X-Forwarded-For")

    item = submission(headers={"X-Forwarded-For": "203.0.113.9"})
    make_engine(Plugin()).enrich(submission=item)
    assert item.client_addr == "203.0.113.9"


def test_hook_telemetry_receive_validate(make_engine):
    class NoBeta:
        @hookimpl
        def telemetry_receive_validate(self, submission):
            if submission.dims.get("appUpdateChannel") == "beta":
                return Rejection(403, "no_beta")
            return None

    engine = make_engine(NoBeta())
    assert engine.validate_submission(submission=submission()) is None
    beta = submission(dims={"appUpdateChannel": "beta"})
    assert engine.validate_submission(submission=beta) == Rejection(403, "no_beta")


def test_hook_telemetry_receive_accepted(make_engine):
    accepted = []

    class Plugin:
        @hookimpl
        def telemetry_receive_accepted(self, submission):
            accepted.append(submission.id)

    make_engine(Plugin()).accepted(submission=submission())
    assert accepted == ["0a1b2c3d-0000-4000-8000-000000000001"]


def test_hook_telemetry_store_spool_writer(make_engine):
    class Writer:
        def __init__(self, worker):
            self.worker = worker

        def append(self, submission):
            pass

        def close(self):
            pass

    class Plugin:
        @hookimpl
        def telemetry_store_spool_writer(self, engine, worker):
            return Writer(worker)

    assert make_engine(Plugin()).spool_writer(worker=3).worker == 3


def test_hook_telemetry_store_spool_writer_unanswered(make_engine):
    with pytest.raises(ConfigError, match="spool writer"):
        make_engine().spool_writer(worker=0)


def test_hook_telemetry_store_partition(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_store_partition(self, record, schema, node_id, seq):
            values = schema.apply(record.dims)
            return "/".join(values[:-2]) + f"/{values[-2]}.{values[-1]}.{node_id}.{seq}.log"

    engine = make_engine(Plugin(), node_id="n1")
    item = record(dims={"reason": "saved-session", "appName": "Firefox", "appUpdateChannel": "release",
                        "appVersion": "23.0.1", "appBuildID": "20130814063812", "submission_date": "20130910"})
    assert engine.partition(record=item, seq=42) == \
        "saved-session/Firefox/release/23.0.1/20130814063812.20130910.n1.42.log"


def test_hook_telemetry_store_partition_unanswered(make_engine):
    with pytest.raises(RecordError) as caught:
        make_engine().partition(record=record(), seq=1)
    assert caught.value.category == "write_failed"


def test_hook_telemetry_store_record(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_store_record(self, record, partition, batch):
            batch.append(partition, f"{record.id}\t{{}}\n".encode())

    batch = Batch()
    make_engine(Plugin()).store_record(record=record(), partition="a/b.log", batch=batch)
    assert batch.files == {"a/b.log": b"0a1b2c3d-0000-4000-8000-000000000001\t{}\n"}


def test_hook_telemetry_store_invalid(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_store_invalid(self, record, error, batch):
            batch.append(f"invalid/{error.category}.log", record.raw + b"\n")

    batch = Batch()
    make_engine(Plugin()).store_invalid(record=record(raw=b"garbage"), error=RecordError("corrupted_data", "x"),
                                        batch=batch)
    assert batch.files == {"invalid/corrupted_data.log": b"garbage\n"}


def test_hook_telemetry_store_publisher(make_engine):
    class Publisher:
        pass

    class Plugin:
        @hookimpl
        def telemetry_store_publisher(self, engine):
            return Publisher() if engine.config.get("store.publish.backend") == "memory" else None

    assert isinstance(make_engine(Plugin(), **{"store.publish.backend": "memory"}).publisher(), Publisher)


def test_hook_telemetry_store_publisher_unknown_backend(make_engine):
    with pytest.raises(ConfigError, match="store.publish.backend: no installed plugin provides publish backend 'nope'"):
        make_engine(**{"store.publish.backend": "nope"}).publisher()


def test_hook_telemetry_store_published(make_engine):
    seen = []

    class Plugin:
        @hookimpl
        def telemetry_store_published(self, published):
            seen.append(published.key)

    item = PublishedFile(key="a/b.log.xz", size=3, checksum="sha256:00", url="file:///x/a/b.log.xz")
    make_engine(Plugin()).published(published=item)
    assert seen == ["a/b.log.xz"]


def test_hook_telemetry_convert_histogram_spec(make_engine):
    class Spec:
        def bounds(self, name):
            return (0, 1, 2)

    class Plugin:
        @hookimpl
        def telemetry_convert_histogram_spec(self, revision, info):
            if revision is None:
                raise RecordError("missing_revision", "no info.revision")
            return Spec()

    engine = make_engine(Plugin())
    assert engine.histogram_spec(revision="http://hg/x/rev/abc", info={}).bounds("A") == (0, 1, 2)
    with pytest.raises(RecordError, match="missing_revision"):
        engine.histogram_spec(revision=None, info={})


def test_hook_telemetry_convert_addon_histograms(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_convert_addon_histograms(self, addon_id):
            if addon_id == "uriloader@pdf.js":
                return {"PDF_VIEWER_USED": {"kind": "boolean"}}
            return None

    engine = make_engine(Plugin())
    assert engine.addon_histograms(addon_id="uriloader@pdf.js") == {"PDF_VIEWER_USED": {"kind": "boolean"}}
    assert engine.addon_histograms(addon_id="other@example") is None


def test_hook_telemetry_convert_payload(make_engine):
    class Core:
        @hookimpl
        def telemetry_convert_payload(self, record, spec):
            record.payload["ver"] = 2
            return ["unknown_histogram", "unknown_histogram"]

    class Addons:
        @hookimpl
        def telemetry_convert_payload(self, record, spec):
            return None

    engine = make_engine(Core(), Addons())
    item = record()
    assert engine.convert_payload(record=item, spec=None) == ["unknown_histogram", "unknown_histogram"]
    assert item.payload["ver"] == 2
    from telemetry_core.metrics.stats import snapshot
    assert snapshot()["convert"]["warning_names"] == {"unknown_histogram": 2}


def test_hook_telemetry_dedup_backend(make_engine):
    class Memory:
        def __init__(self):
            self.live = {}

        def decide(self, key, record_id, received_at_ms):
            outcome = "duplicate" if key.session in self.live else "kept"
            self.live[key.session] = record_id
            return Decision(outcome, record_id)

        def close(self):
            pass

    class Plugin:
        @hookimpl
        def telemetry_dedup_backend(self, engine):
            return Memory() if engine.config.get("dedup.backend") == "memory" else None

    backend = make_engine(Plugin(), **{"dedup.backend": "memory"}).dedup_backend()
    key = DedupKey("s1", "idle-daily", "h")
    assert [backend.decide(key, "r", 1).outcome for _ in range(2)] == ["kept", "duplicate"]


def test_hook_telemetry_dedup_backend_unknown(make_engine):
    with pytest.raises(ConfigError, match="dedup.backend: no installed plugin provides dedup backend 'nope'"):
        make_engine(**{"dedup.backend": "nope"}).dedup_backend()


def test_hook_telemetry_dedup_key(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_dedup_key(self, record):
            return DedupKey(record.id, record.dims.get("reason", ""), "h")

    key = make_engine(Plugin()).dedup_key(record=record(dims={"reason": "idle-daily"}))
    assert key == DedupKey("0a1b2c3d-0000-4000-8000-000000000001", "idle-daily", "h")


def test_hook_telemetry_dedup_decided(make_engine):
    ledger = []

    class Plugin:
        @hookimpl
        def telemetry_dedup_decided(self, record, decision):
            ledger.append((record.id, decision.outcome))

    make_engine(Plugin()).dedup_decided(record=record(), decision=Decision("kept", "r1"))
    assert ledger == [("0a1b2c3d-0000-4000-8000-000000000001", "kept")]


def test_hook_telemetry_compress_codec(make_engine):
    class Rot13Codec:
        name = suffix = "rot"

        def compress(self, source, target, level):
            target.write(bytes((b + 13) % 256 for b in source.read()))

        def open_reader(self, source):
            return io.BytesIO(bytes((b - 13) % 256 for b in source.read()))

    class Plugin:
        @hookimpl
        def telemetry_compress_codec(self, name):
            return Rot13Codec() if name == "rot" else None

    codec = make_engine(Plugin()).codec(name="rot")
    packed = io.BytesIO()
    codec.compress(io.BytesIO(b"hello"), packed, 0)
    assert codec.open_reader(io.BytesIO(packed.getvalue())).read() == b"hello"


def test_hook_telemetry_reduce_executor(make_engine):
    class Inline:
        def run(self, job, inputs, source):
            return {"files": len(list(inputs))}

    class Plugin:
        @hookimpl
        def telemetry_reduce_executor(self, name, engine):
            return Inline() if name == "inline" else None

    engine = make_engine(Plugin())
    job = JobSpec(job_path="job.py", filter={}, output="out.txt", input_uri="/data")
    assert engine.executor(name="inline").run(job, [InputFile("a", 1, ())], None) == {"files": 1}
    with pytest.raises(ConfigError, match="executor 'spork'"):
        engine.executor(name="spork")


def test_hook_telemetry_reduce_input(make_engine):
    class Listing:
        def __init__(self, uri):
            self.uri = uri

    class Plugin:
        @hookimpl
        def telemetry_reduce_input(self, uri, engine):
            return Listing(uri) if uri.startswith("mem://") else None

    engine = make_engine(Plugin())
    assert engine.reduce_input(uri="mem://x").uri == "mem://x"
    with pytest.raises(ConfigError, match="no installed plugin reads input 'ftp://x'"):
        engine.reduce_input(uri="ftp://x")


def test_hook_telemetry_reduce_record_filters(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_reduce_record_filters(self, job, engine):
            if not job.dedup:
                return None
            return [lambda record_id, dims, body: record_id != "superseded"]

    engine = make_engine(Plugin())
    job = JobSpec(job_path="job.py", filter={}, output="out", input_uri="/d", dedup=True)
    (keep,) = engine.record_filters(job=job)
    assert keep("r1", (), b"{}") and not keep("superseded", (), b"{}")
    job.dedup = False
    assert engine.record_filters(job=job) == []


def test_hook_telemetry_reduce_context(make_engine):
    class Plugin:
        @hookimpl
        def telemetry_reduce_context(self, context, job):
            context.extras["histogram_bounds"] = lambda name: (0, 1, 2)

    context = JobContext(write=lambda k, v: None)
    make_engine(Plugin()).reduce_context(context=context, job=JobSpec("j", {}, "o", "i"))
    assert context.histogram_bounds("X") == (0, 1, 2)
    with pytest.raises(AttributeError, match="telemetry_reduce_context"):
        context.missing
