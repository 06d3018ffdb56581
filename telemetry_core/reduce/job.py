"""Loading and checking a MapReduce job script.

A job script is a Python file, loaded as a module (that is the feature: the
script is the job).  It defines, as in the original telemetry-server::

    def map(key, dims, value, context): ...        # required
    def combine(key, values, context): ...         # optional
    def reduce(key, values, context): ...          # optional (default: write every value)
    def setup(context): ...                        # optional, once per mapper / reducer task
    def teardown(context): ...                     # optional, after the task's last record / key

:func:`load_job` reads the file once and :func:`load_job_source` builds the
module from those bytes, so processes that cannot see the file (Spark
executors on other machines) load exactly what the driver checked.  Every
problem (missing file, syntax error, an exception while the module body
runs, even ``sys.exit``; a missing ``map``; a function that cannot take
the documented arguments) raises :class:`JobScriptError` with one line
that names the script, the line when there is one, and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from ..errors import TelemetryError

#: The functions a job may define, with the arguments each must accept.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "map": ("key", "dims", "value", "context"),
    "combine": ("key", "values", "context"),
    "reduce": ("key", "values", "context"),
    "setup": ("context",),
    "teardown": ("context",),
}
MAX_SCRIPT_BYTES = 16 << 20


class JobScriptError(TelemetryError):
    """The job script cannot be used (see the message for what to fix)."""


@dataclass
class JobScript:
    """A loaded job: its functions (``None`` when the script does not define one)."""

    path: str
    source: bytes
    module: ModuleType
    map: Callable[..., Any]
    combine: Callable[..., Any] | None
    reduce: Callable[..., Any] | None
    setup: Callable[..., Any] | None
    teardown: Callable[..., Any] | None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source).hexdigest()


class _SourceLoader(importlib.abc.SourceLoader):
    """Loads a module from bytes kept in memory; tracebacks still name ``path``
    (``linecache`` asks the loader for the source)."""

    def __init__(self, path: str, source: bytes) -> None:
        self.path = path
        self.source = source

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self.source


_LOADED: dict[str, JobScript] = {}


def load_job(path: str | Path) -> JobScript:
    """Read and load the job script at ``path``; raises :class:`JobScriptError`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            source = handle.read(MAX_SCRIPT_BYTES + 1)
    except FileNotFoundError:
        raise JobScriptError(f"job script {path} does not exist; give the path of a .py file to --job") from None
    except IsADirectoryError:
        raise JobScriptError(f"job script {path} is a directory; give the path of a .py file to --job") from None
    except OSError as exc:
        raise JobScriptError(f"job script {path} cannot be read: {exc.strerror}") from None
    if len(source) > MAX_SCRIPT_BYTES:
        raise JobScriptError(f"job script {path} is larger than {MAX_SCRIPT_BYTES >> 20} MiB; "
                             f"is it really a Python script?")
    return load_job_source(str(path.resolve()), source)


def load_job_source(path: str, source: bytes) -> JobScript:
    """Load a job from its source bytes (``path`` names it in errors and tracebacks).

    A script with the same bytes is loaded once per process; its module is
    registered as ``telemetry_job_<sha256 prefix>`` so objects of classes it
    defines can be pickled between mappers and reducers.
    """
    digest = hashlib.sha256(source).hexdigest()
    loaded = _LOADED.get(digest)
    if loaded is not None:
        return loaded
    module_name = f"telemetry_job_{digest[:16]}"
    loader = _SourceLoader(path, source)
    spec = importlib.util.spec_from_loader(module_name, loader, origin=path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules[module_name] = module
    try:
        loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise JobScriptError(f"job script {path}:{exc.lineno}: syntax error: {exc.msg}; fix the script") from None
    except KeyboardInterrupt:
        sys.modules.pop(module_name, None)
        raise
    except BaseException as exc:  # noqa: BLE001 - a hostile script may even raise SystemExit
        sys.modules.pop(module_name, None)
        raise JobScriptError(f"job script {path}{_line_in(exc, path)} failed while loading: "
                             f"{_one_line(exc)}; fix the script") from None
    job = JobScript(path=path, source=source, module=module, map=_function(module, "map", path, required=True),
                    combine=_function(module, "combine", path), reduce=_function(module, "reduce", path),
                    setup=_function(module, "setup", path), teardown=_function(module, "teardown", path))
    _LOADED[digest] = job
    return job


def _function(module: ModuleType, name: str, path: str, *, required: bool = False) -> Callable[..., Any] | None:
    arguments = SIGNATURES[name]
    wanted = f"{name}({', '.join(arguments)})"
    function = module.__dict__.get(name)
    if function is None:
        if required:
            raise JobScriptError(f"job script {path} defines no {wanted} function; add one")
        return None
    if not callable(function):
        raise JobScriptError(f"job script {path}: {name} is a {type(function).__name__}, not a function; "
                             f"define {wanted}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return function  # a builtin or C function: nothing to check
    try:
        signature.bind(*arguments)
    except TypeError:
        raise JobScriptError(f"job script {path}: {name}{signature} cannot be called as {wanted}; "
                             f"change its arguments") from None
    return function


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _line_in(exc: BaseException, path: str) -> str:
    """``:N`` for the last traceback frame in the script, or ``""``."""
    line = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            line = f":{frame.lineno}"
    return line


def user_traceback(exc: BaseException, path: str) -> str:
    """The traceback of an exception raised by job code, starting at the first frame
    in the job script (the executor's own frames are noise to the job's author)."""
    frames = traceback.extract_tb(exc.__traceback__)
    start = next((i for i, frame in enumerate(frames) if frame.filename == path), 0)
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames[start:]),
             *traceback.format_exception_only(type(exc), exc)]
    return "".join(lines)
