"""Unified Telemetry pings (``version`` 4, Firefox 38+), as telemetry-server's ``convert.py`` took them.

A unified ping has ``type``, ``id``, ``clientId``, ``application``,
``payload`` and usually ``environment`` at the top level, and no ``info``.
Conversion, in the original's order:

1. ``info`` is built from ``application`` (:data:`APPLICATION_FIELDS`) and
   ``info.reason`` is the ping's ``type``; ``version`` becomes 5.  The
   record's dimensions come from this ``info`` where the submission path
   lacks them, as for classic pings (:func:`unified_info`).
2. ``main`` and ``saved-session`` pings must carry ``payload.info`` and
   ``payload.histograms``; their ``payload.histograms`` (and, beyond the
   original, ``payload.keyedHistograms`` key by key and
   ``payload.addonHistograms``) are converted with the spec of
   ``payload.info.revision``, under the classic rule (histograms need a
   revision and a revision needs histograms).
3. ``saved-session`` pings are flattened into the classic layout
   (:func:`flatten_saved_session`): ``payload`` fields move to the top level,
   ``payload.info`` is merged into ``info``, ``environment`` fields are copied
   into ``info`` (:data:`ENVIRONMENT_FIELDS`, :data:`ADAPTER_FIELDS`),
   ``Windows_*`` becomes ``WINNT``, ``clientId`` is copied to ``clientID``
   and ``ver`` is 5.
4. Every other type (``activation``, ``crash``, ``deletion`` ...) is kept as
   it was sent, with its ``info`` and ``version`` 5.

Failures are ``RecordError("bad_payload", ...)`` with one line saying what
the ping lacks.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import RecordError

UNIFIED_VERSION = 4
#: ``version`` (and, for saved-session pings, ``ver``) of a converted unified ping.
UNIFIED_CONVERTED_VERSION = 5
#: Ping types whose ``payload`` holds histograms that are converted.
HISTOGRAM_PING_TYPES = frozenset({"main", "saved-session"})

#: classic ``info`` field → path in the unified ping's ``application`` (the original's ``appFieldMap``).
APPLICATION_FIELDS: dict[str, tuple[str, ...]] = {
    "appName": ("name",),
    "appUpdateChannel": ("channel",),
    "appVersion": ("version",),
    "appBuildID": ("buildId",),
    "arch": ("architecture",),
    "platformVersion": ("platformVersion",),
    "xpcomAbi": ("xpcomAbi",),
    "vendor": ("vendor",),
}

#: classic ``info`` field → path in ``environment`` (the original's ``envFieldMap``).
ENVIRONMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "appID": ("build", "applicationId"),
    "platformBuildID": ("build", "buildId"),
    "cpucount": ("system", "cpu", "count"),
    "memsize": ("system", "memoryMB"),
    "isWow64": ("system", "isWow64"),
    "device": ("system", "device", "model"),
    "manufacturer": ("system", "device", "manufacturer"),
    "hardware": ("system", "device", "hardware"),
    "tablet": ("system", "device", "isTablet"),
    "locale": ("settings", "locale"),
    "OS": ("system", "os", "name"),
    "version": ("system", "os", "version"),
    "kernel_version": ("system", "os", "kernelVersion"),
    "D2DEnabled": ("system", "gfx", "D2DEnabled"),
    "DWriteEnabled": ("system", "gfx", "DWriteEnabled"),
    "DWriteVersion": ("system", "gfx", "DWriteVersion"),
    "profileHDDModel": ("system", "hdd", "profile", "model"),
    "profileHDDRevision": ("system", "hdd", "profile", "revision"),
    "binHDDModel": ("system", "hdd", "binary", "model"),
    "binHDDRevision": ("system", "hdd", "binary", "revision"),
    "winHDDModel": ("system", "hdd", "system", "model"),
    "winHDDRevision": ("system", "hdd", "system", "revision"),
    "activeExperiment": ("addons", "activeExperiment", "id"),
    "activeExperimentBranch": ("addons", "activeExperiment", "branch"),
    "persona": ("addons", "theme", "id"),
}

#: classic ``info.adapter*`` field → path in one of ``environment.system.gfx.adapters`` (``adapterFieldMap``).
ADAPTER_FIELDS: dict[str, tuple[str, ...]] = {
    "adapterDescription": ("description",),
    "adapterVendorID": ("vendorID",),
    "adapterDeviceID": ("deviceID",),
    "adapterSubsysID": ("subsysID",),
    "adapterRAM": ("RAM",),
    "adapterDriver": ("driver",),
    "adapterDriverVersion": ("driverVersion",),
    "adapterDriverDate": ("driverDate",),
}


def is_unified(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` has the unified shape: ``version`` and no classic ``ver``."""
    return "version" in payload and "ver" not in payload


def unified_info(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` step 1 builds (without changing ``payload``): ``application`` fields
    and ``reason`` = ``type``.  Missing or malformed sections give fewer fields."""
    info: dict[str, Any] = {}
    application = payload.get("application")
    if isinstance(application, dict):
        add_info_fields(info, application, APPLICATION_FIELDS)
    ping_type = payload.get("type")
    if isinstance(ping_type, str):
        info["reason"] = ping_type
    return info


def spec_request(payload: dict[str, Any]) -> tuple[str | None, dict[str, Any]] | None:
    """``(revision, info)`` to look the spec up with, or ``None`` when the ping has no
    histograms to convert.  ``info`` is ``payload.info`` over the built ``info``, so a
    ping without a revision can still be resolved by channel and build id."""
    if payload.get("type") not in HISTOGRAM_PING_TYPES:
        return None
    try:
        check_unified(payload)
        _check_histogram_ping(payload)
    except RecordError:
        return None  # conversion refuses the ping before it needs a spec
    inner = payload["payload"]
    histograms, keyed = inner.get("histograms"), inner.get("keyedHistograms")
    if not ((isinstance(histograms, dict) and histograms) or (isinstance(keyed, dict) and keyed)):
        return None
    info = {**unified_info(payload), **inner["info"]}
    revision = info.get("revision")
    return (revision if isinstance(revision, str) else None), info


def convert_unified(payload: dict[str, Any], convert_sections: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """Convert a unified ping in place (steps 1-4 above); returns warning names.

    ``convert_sections(holder)`` converts the histogram sections of
    ``payload["payload"]`` for ``main`` and ``saved-session`` pings and
    returns its warnings (the convert stage passes its classic converter).
    Raises ``RecordError("bad_payload", ...)`` when ``version`` is not 4
    (5 is an already converted ping), when ``type``, ``application`` or
    ``payload`` is missing, when the ping already has ``info``, when a
    ``main``/``saved-session`` ping lacks ``payload.info`` or
    ``payload.histograms``, or when a ``saved-session`` ping lacks
    ``environment``.
    """
    check_unified(payload)
    ping_type = payload["type"]
    warnings: list[str] = []
    if ping_type in HISTOGRAM_PING_TYPES:
        _check_histogram_ping(payload)
        warnings = convert_sections(payload["payload"])
    payload["info"] = unified_info(payload)
    payload["version"] = UNIFIED_CONVERTED_VERSION
    if ping_type == "saved-session":
        flatten_saved_session(payload)
    return warnings


def check_unified(payload: dict[str, Any]) -> None:
    """The original's checks of a unified ping's top level; ``RecordError("bad_payload")``."""
    version = payload.get("version")
    if type(version) is int and version == UNIFIED_CONVERTED_VERSION:
        raise RecordError("bad_payload", "unified ping is already converted (version 5); store it as it is")
    if type(version) is not int or version != UNIFIED_VERSION:
        raise RecordError("bad_payload", f"unified ping version is {version!r}; only version 4 is converted")
    ping_type = payload.get("type")
    if not isinstance(ping_type, str) or not ping_type:
        raise RecordError("bad_payload", "unified ping has no type")
    if not isinstance(payload.get("application"), dict):
        raise RecordError("bad_payload", "unified ping has no application object")
    if not isinstance(payload.get("payload"), dict):
        raise RecordError("bad_payload", "unified ping has no payload object")
    if "info" in payload:
        raise RecordError("bad_payload", "unified version 4 ping already has an info field")


def _check_histogram_ping(payload: dict[str, Any]) -> None:
    """What a ``main`` or ``saved-session`` ping must carry besides the top level."""
    ping_type = payload["type"]
    inner = payload["payload"]
    if not isinstance(inner.get("info"), dict):
        raise RecordError("bad_payload", f"unified {ping_type} ping has no payload.info object")
    if "histograms" not in inner:
        raise RecordError("bad_payload", f"unified {ping_type} ping has no payload.histograms")
    if ping_type == "saved-session" and not isinstance(payload.get("environment"), dict):
        raise RecordError("bad_payload", "unified saved-session ping has no environment object")


def flatten_saved_session(ping: dict[str, Any]) -> None:
    """Give a unified saved-session ping (``info`` already built) the classic layout, in place.

    ``payload`` fields move to the top level (a name the top level already
    has is kept as ``"payload.<name>"``), ``payload.info`` fields are added
    to ``info`` where ``info`` lacks them, ``payload.ver`` is kept as
    ``"payload.ver"`` and ``payload`` is removed.  Then ``environment``
    fields are copied into ``info`` (a name ``info`` already has becomes
    ``"environment.<name>"``), ``OS`` ``Windows_*`` becomes ``WINNT``, the
    first two GPU adapters give ``adapter*`` and ``adapter*2`` fields and
    ``isGPU2Active``, ``clientID`` is ``clientId`` (or null) and ``ver`` is 5.
    """
    inner = ping.pop("payload")
    for field, value in inner.items():
        if field in ("info", "ver"):
            continue
        ping[f"payload.{field}" if field in ping else field] = value
    info = ping["info"]
    for field, value in inner["info"].items():
        info.setdefault(field, value)
    ping["payload.ver"] = inner.get("ver")

    environment = ping["environment"]
    add_info_fields(info, environment, ENVIRONMENT_FIELDS)
    os_name = info.get("OS", "Other")
    if isinstance(os_name, str) and os_name.startswith("Windows_"):
        info["OS"] = "WINNT"
    adapters = _pick(environment, ("system", "gfx", "adapters"))
    if isinstance(adapters, list) and adapters:
        if isinstance(adapters[0], dict):
            add_info_fields(info, adapters[0], ADAPTER_FIELDS)
        if len(adapters) > 1 and isinstance(adapters[1], dict):
            add_info_fields(info, adapters[1], ADAPTER_FIELDS, suffix="2")
            info["isGPU2Active"] = bool(adapters[1].get("GPUActive"))
    ping["clientID"] = ping.get("clientId")
    ping["ver"] = UNIFIED_CONVERTED_VERSION


def add_info_fields(info: dict[str, Any], section: dict[str, Any], fields: dict[str, tuple[str, ...]],
                    suffix: str = "") -> None:
    """Copy each field of ``fields`` found in ``section`` (not null) into ``info``;
    a name ``info`` already has is written as ``"environment.<name>"``."""
    for name, path in fields.items():
        name += suffix
        if name in info:
            name = f"environment.{name}"
        value = _pick(section, path)
        if value is not None:
            info[name] = value


def _pick(section: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested objects, ``None`` where a step is missing or not an object."""
    for step in path:
        if not isinstance(section, dict):
            return None
        section = section.get(step)
    return section
