"""Every hook of telemetry-core, in one place.

Hooks are grouped by stage and prefixed with it: ``telemetry_receive_*``,
``telemetry_convert_*``, ``telemetry_dedup_*``, ``telemetry_store_*``,
``telemetry_compress_*`` and ``telemetry_reduce_*``, plus lifecycle hooks.
Implement one with :data:`hookimpl`::

    from telemetry_core import hookimpl

    @hookimpl
    def telemetry_receive_validate(submission):
        ...

Call semantics are stated in the last line of each docstring:

* **first non-None result wins** (``firstresult``): "pick one" hooks such as
  which codec, which publisher, which spec for a revision.  Built-in
  implementations are ``trylast=True``, so a third-party plugin's answer
  wins without unregistering anything.
* **all results are collected**: fan-out hooks; the caller gets a list of
  every non-None result, most recently registered plugin first.

Pipeline code never calls these directly: it calls the typed methods of
:class:`telemetry_core.engine.Engine`, always with keyword arguments.  The
spec signatures only ever gain arguments; none is renamed or removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    import click

    from .config.loader import Config
    from .engine import Engine
    from .errors import RecordError
    from .interfaces import (Codec, DedupBackend, Executor, HistogramSpec, InputSource, JobContext,
                             JobSpec, Publisher, PublishedFile, RecordFilter, Route, Service,
                             SpoolWriter, StoreBatch)
    from .config.options import Section
    from .records import Decision, DedupKey, Record, Rejection, Submission, SubmissionPath
    from .schema import Schema

#: Project name: the hook prefix's owner and the entry-point group of third-party plugins.
PROJECT_NAME = "telemetry"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------- lifecycle


@hookspec
def telemetry_config_schema() -> dict[str, Section] | None:
    """Declare the options of this plugin's own config sections.

    :return: a mapping from section name (conventionally the plugin's name)
        to a :class:`~telemetry_core.config.options.Section`; the YAML section
        ``plugins.<name>`` is then validated against it, defaults filled in,
        and readable with ``config.plugin_section(name)``.

    All results are collected (and merged).
    """


@hookspec
def telemetry_config_choices(key: str) -> list[str] | None:
    """Name the values this plugin answers for a "pick one" config key.

    :param key: one of ``compress.codec``, ``dedup.backend``,
        ``store.publish.backend`` and ``reduce.executor``: the keys whose value
        names a plugin's answer to ``telemetry_compress_codec``,
        ``telemetry_dedup_backend``, ``telemetry_store_publisher`` and
        ``telemetry_reduce_executor``.
    :return: the names this plugin's factory answers for ``key`` (e.g.
        ``["zstd"]`` for ``compress.codec``), or ``None``.

    All results are collected: ``telemetry config check`` (and every command
    at start) refuses a configured name that no plugin lists, naming the key
    and the installed choices.  A third-party plugin that answers one of
    those factories without implementing this hook makes its key unchecked
    (a warning says so).
    """


@hookspec
def telemetry_configure(config: Config) -> None:
    """Read configuration, once, after it was validated and before anything runs.

    :param config: the validated :class:`~telemetry_core.config.loader.Config`.

    All implementations are called; results are ignored.  Raise
    :class:`~telemetry_core.errors.ConfigError` to refuse a configuration.
    """


@hookspec
def telemetry_startup(engine: Engine, command: str) -> None:
    """A command that uses the engine is starting.

    :param engine: the engine (config, node id, metrics, typed hook calls).
    :param command: the CLI command's name, e.g. ``"run"`` or ``"process"``.

    All implementations are called; results are ignored.  Start background
    threads here (and stop them in :func:`telemetry_shutdown`).
    """


@hookspec
def telemetry_services(engine: Engine) -> list[Service] | None:
    """Contribute long-running services to ``telemetry run``.

    :param engine: the started engine.
    :return: services (objects with ``name``, ``start()``, ``stop(timeout)``
        and ``failed()``), e.g. the HTTP edge or the processor loop.

    All results are collected; ``telemetry run`` starts every service and
    stops them in reverse order.  It restarts a service whose ``failed()``
    reports (``stop()`` then ``start()`` again on the same object, after a
    back-off; ``supervise.*``), and calls an optional ``check()`` before
    starting anything, which may raise ``ConfigError`` for a config the
    service would refuse.
    """


@hookspec
def telemetry_shutdown(engine: Engine, command: str) -> None:
    """The command is finishing (also after an error); release resources.

    :param engine: the engine.
    :param command: the CLI command's name.

    All implementations are called, even when one raises; results are ignored.
    """


@hookspec
def telemetry_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``telemetry`` CLI.

    :param cli: the top-level :class:`click.Group`; add commands with
        ``@cli.command()``.

    All implementations are called; results are ignored.
    """


# --------------------------------------------------------------------------- receive


@hookspec
def telemetry_receive_routes(engine: Engine) -> list[Route] | None:
    """Add HTTP routes to the edge (besides the submission endpoints).

    :param engine: the engine.
    :return: :class:`~telemetry_core.interfaces.Route` objects.

    All results are collected.
    """


@hookspec(firstresult=True)
def telemetry_receive_parse_path(path: str) -> SubmissionPath | Rejection | None:
    """Parse a submission URL path into a submission id and dimensions.

    :param path: the URL path after ``/submit/telemetry/``, percent-decoded,
        e.g. ``"<uuid>/idle-daily/Firefox/23.0.1/release/20130814063812"``.
    :return: a :class:`~telemetry_core.records.SubmissionPath`, a
        :class:`~telemetry_core.records.Rejection` when the path is invalid,
        or ``None`` to let another plugin parse it.

    First non-None result wins.
    """


@hookspec
def telemetry_receive_enrich(submission: Submission) -> None:
    """Add to an accepted-so-far submission before it is validated and spooled.

    :param submission: the :class:`~telemetry_core.records.Submission`; set
        ``client_addr`` or add ``extra`` entries (headers and peer address
        are on it).

    All implementations are called; results are ignored.
    """


@hookspec
def telemetry_receive_validate(submission: Submission) -> Rejection | None:
    """Accept or refuse a submission before it is spooled.

    :param submission: the parsed, enriched submission (body not inflated).
    :return: a :class:`~telemetry_core.records.Rejection` to refuse it, else ``None``.

    All results are collected; any rejection refuses the submission (the
    first one is answered).
    """


@hookspec
def telemetry_receive_accepted(submission: Submission) -> None:
    """A submission was spooled and is about to be acknowledged.

    :param submission: the spooled submission.

    All implementations are called; results are ignored.
    """


# --------------------------------------------------------------------------- store


@hookspec(firstresult=True)
def telemetry_store_spool_writer(engine: Engine, worker: int) -> SpoolWriter | None:
    """Open the raw spool an edge worker appends accepted submissions to.

    :param engine: the engine (``engine.config``, ``engine.node_id``).
    :param worker: the edge worker's number (0-based), unique on this node.
    :return: a :class:`~telemetry_core.interfaces.SpoolWriter`.

    First non-None result wins.
    """


@hookspec(firstresult=True)
def telemetry_store_partition(record: Record, schema: Schema, node_id: str, seq: int) -> str | None:
    """Name the store file a valid record is appended to.

    :param record: the converted record (``record.dims`` already follow the
        schema, in the schema's order).
    :param schema: the dimension :class:`~telemetry_core.schema.Schema`.
    :param node_id: this node's id, part of every file name.
    :param seq: this node's sequence number of the spool file being
        processed, part of every file name (so names never collide).
    :return: a relative path inside the store (the published key without the
        codec suffix), e.g.
        ``"saved-session/Firefox/release/23.0.1/20130814063812.20130910.node1.42.log"``.

    First non-None result wins.
    """


@hookspec
def telemetry_store_record(record: Record, partition: str, batch: StoreBatch) -> None:
    """Store a valid record.

    :param record: the converted, de-duplicated record.
    :param partition: the path chosen by :func:`telemetry_store_partition`.
    :param batch: the processor's work files for the current spool file;
        ``batch.append(path, data)`` writes crash-safely.

    All implementations are called (every store gets every record).
    """


@hookspec
def telemetry_store_invalid(record: Record, error: RecordError, batch: StoreBatch) -> None:
    """Store a record that failed a stage, with its original bytes and reason.

    :param record: the record as far as it got (``record.raw`` is the body as spooled).
    :param error: the :class:`~telemetry_core.errors.RecordError` (its
        ``category`` names the ``invalid/`` partition).
    :param batch: the processor's work files for the current spool file.

    All implementations are called.
    """


@hookspec(firstresult=True)
def telemetry_store_publisher(engine: Engine) -> Publisher | None:
    """Build the long-term storage that compressed files are published to.

    :param engine: the engine; ``store.publish.backend`` names the backend.
    :return: a :class:`~telemetry_core.interfaces.Publisher`, or ``None``
        when this plugin does not provide the configured backend.

    First non-None result wins.
    """


@hookspec
def telemetry_store_published(published: PublishedFile) -> None:
    """A file was published and verified.

    :param published: the :class:`~telemetry_core.interfaces.PublishedFile`.

    All implementations are called; results are ignored.
    """


# --------------------------------------------------------------------------- convert


@hookspec(firstresult=True)
def telemetry_convert_histogram_spec(revision: str | None, info: dict[str, Any],
                                     engine: Engine) -> HistogramSpec | None:
    """Find the histogram definitions a payload was recorded with.

    :param revision: the payload's ``info.revision`` URL, or ``None`` when absent.
    :param info: the payload's ``info`` object (channel, build id, version
        help find a spec when the revision is missing).
    :param engine: the engine (its config; ``engine.state`` for caches).
    :return: a :class:`~telemetry_core.interfaces.HistogramSpec`, or ``None``.

    First non-None result wins.  Raise
    :class:`~telemetry_core.errors.RecordError` (``missing_revision``,
    ``conversion_error`` ...) when the spec cannot be had.
    """


@hookspec(firstresult=True)
def telemetry_convert_addon_histograms(addon_id: str) -> dict[str, dict[str, Any]] | None:
    """Known histogram definitions of an add-on, for validating ``addonHistograms``.

    :param addon_id: the add-on id, e.g. ``"uriloader@pdf.js"``.
    :return: ``{histogram name: Histograms.json-style definition}``, or ``None``.

    First non-None result wins.
    """


@hookspec
def telemetry_convert_payload(record: Record, spec: HistogramSpec | None, engine: Engine) -> list[str] | None:
    """Convert sections of a payload in place (``record.payload``).

    :param record: the decoded record; each plugin converts the sections it
        owns (the core converts every shape telemetry-server took: classic
        ``ver`` 1 ``histograms``, ``addonHistograms`` and ``keyedHistograms``,
        Firefox OS ``ver`` 3 and unified ``version`` 4 pings; see
        docs/convert.md).
    :param spec: the record's histogram spec (``None`` when it has no histograms).
    :param engine: the engine (e.g. ``engine.addon_histograms(addon_id=...)``).
    :return: names of warnings (counted in metrics), or ``None``.

    All results are collected.  Raise
    :class:`~telemetry_core.errors.RecordError` to send the record to ``invalid/``.
    """


# --------------------------------------------------------------------------- dedup


@hookspec(firstresult=True)
def telemetry_dedup_backend(engine: Engine) -> DedupBackend | None:
    """Build the dedup backend named by ``dedup.backend``.

    :param engine: the engine.
    :return: a :class:`~telemetry_core.interfaces.DedupBackend`, or ``None``
        when this plugin does not provide the configured backend.

    First non-None result wins.
    """


@hookspec(firstresult=True)
def telemetry_dedup_key(record: Record) -> DedupKey | None:
    """Say what a record is de-duplicated on.

    :param record: the converted record.
    :return: a :class:`~telemetry_core.records.DedupKey`, or ``None``.

    First non-None result wins.
    """


@hookspec
def telemetry_dedup_decided(record: Record, decision: Decision) -> None:
    """A dedup decision was made (for ledgers, audits, metrics).

    :param record: the record decided on.
    :param decision: the backend's :class:`~telemetry_core.records.Decision`.

    All implementations are called; results are ignored.
    """


# --------------------------------------------------------------------------- compress


@hookspec(firstresult=True)
def telemetry_compress_codec(name: str) -> Codec | None:
    """Find a codec by name or file suffix (``"xz"``, ``"gzip"``, ``"gz"``, ``"zst"`` ...).

    :param name: a codec name (``compress.codec``) or a compressed file's suffix.
    :return: a :class:`~telemetry_core.interfaces.Codec`, or ``None``.

    First non-None result wins.
    """


# --------------------------------------------------------------------------- reduce


@hookspec(firstresult=True)
def telemetry_reduce_executor(name: str, engine: Engine) -> Executor | None:
    """Build the executor a MapReduce job runs on.

    :param name: the executor's name (``--executor`` or ``reduce.executor``).
    :param engine: the engine.
    :return: an :class:`~telemetry_core.interfaces.Executor`, or ``None``.

    First non-None result wins.
    """


@hookspec(firstresult=True)
def telemetry_reduce_input(uri: str, engine: Engine) -> InputSource | None:
    """Open the input a job reads: a local directory, ``s3://bucket/prefix`` ...

    :param uri: the ``--input`` value (or the configured publish target's URI).
    :param engine: the engine.
    :return: an :class:`~telemetry_core.interfaces.InputSource`, or ``None``.

    First non-None result wins.
    """


@hookspec
def telemetry_reduce_record_filters(job: JobSpec, engine: Engine) -> list[RecordFilter] | None:
    """Give read-time record filters for a job (e.g. the dedup ledger for ``--dedup``).

    :param job: the :class:`~telemetry_core.interfaces.JobSpec`.
    :param engine: the engine.
    :return: callables ``(record id, dims, body) -> keep?`` (``body`` is the
        stored JSON bytes); called once per job, the filters then run per record.

    All results are collected; a record is kept when every filter keeps it.
    """


@hookspec
def telemetry_reduce_context(context: JobContext, job: JobSpec) -> None:
    """Add attributes to the context a job's ``map``/``reduce`` receive.

    :param context: the :class:`~telemetry_core.interfaces.JobContext`;
        add to ``context.extras`` (e.g. ``extras["histogram_bounds"]``).
    :param job: the job being run.

    All implementations are called, once per mapper or reducer process.
    """
