"""Firefox OS 1.3 payloads (``ver`` 3), as telemetry-server's ``convert.py`` took them.

A Firefox OS "first time use" ping is flat: no ``info``, no histograms, and
device facts under dotted top-level keys (``"deviceinfo.update_channel"``
...).  It becomes a ``ver`` 2 payload whose ``info`` is built from those
keys, so its dimensions and every job that reads ``info`` work as for
Firefox pings::

    info = {"reason": "ftu", "appUpdateChannel": <deviceinfo.update_channel>,
            "appBuildID": <deviceinfo.platform_build_id>, "appName": "FirefoxOS",
            "appVersion": <deviceinfo.platform_version>}

A key the ping lacks is ``"UNKNOWN"``, as in the original.  ``pingID`` is
removed (the original did so: it is a per-ping identifier nobody analyses).
"""

from __future__ import annotations

from typing import Any

#: The payload version of Firefox OS 1.3 pings.
FXOS_VERSION = 3
#: What a missing ``deviceinfo.*`` field becomes in ``info``.
UNKNOWN = "UNKNOWN"
#: ``info`` field → the ``deviceinfo.*`` key it is read from.
DEVICEINFO_FIELDS = {
    "appUpdateChannel": "deviceinfo.update_channel",
    "appBuildID": "deviceinfo.platform_build_id",
    "appVersion": "deviceinfo.platform_version",
}


def is_fxos(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` is a Firefox OS 1.3 ping (``ver`` is the integer 3)."""
    ver = payload.get("ver")
    return type(ver) is int and ver == FXOS_VERSION


def fxos_info(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` the original built for a Firefox OS 1.3 ping (without changing it)."""
    info: dict[str, Any] = {"reason": "ftu"}
    for field, key in DEVICEINFO_FIELDS.items():
        info[field] = payload.get(key, UNKNOWN)
    info["appName"] = "FirefoxOS"
    return info


def convert_fxos(payload: dict[str, Any]) -> list[str]:
    """Convert a ``ver`` 3 payload in place to ``ver`` 2: the built ``info`` replaces
    any ``info`` it had, ``pingID`` is dropped; the rest is kept as sent.
    Returns warning names (none today)."""
    payload["info"] = fxos_info(payload)
    payload.pop("pingID", None)
    payload["ver"] = 2
    return []
