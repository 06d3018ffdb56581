"""Which payload shape a record has, and what the pipeline needs from each before converting.

=================  ===========================================  ================================
shape              recognised by                                converted by
=================  ===========================================  ================================
classic            ``ver`` 1                                    :mod:`.conversion` (to ``ver`` 2)
Firefox OS 1.3     ``ver`` 3                                    :mod:`.fxos` (to ``ver`` 2)
unified            ``version`` (and no ``ver``)                 :mod:`.unified` (to ``version`` 5)
=================  ===========================================  ================================

The processor asks two things before the convert hooks run: which
``info`` the record's dimensions come from (:func:`dimension_info`: the
ping's own for classic payloads, the one conversion will build for the
others) and which spec its histograms need (:func:`spec_request`).  Both
cost a dict lookup or two for a classic payload.
"""

from __future__ import annotations

from typing import Any

from . import fxos, unified


def dimension_info(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The ``info`` the record's missing dimensions are read from (not a copy to change)."""
    ver = payload.get("ver")
    if type(ver) is int and ver == fxos.FXOS_VERSION:
        return fxos.fxos_info(payload)
    info = payload.get("info")
    if ver is None and isinstance(payload.get("version"), int) and not isinstance(info, dict):
        return unified.unified_info(payload)
    return info if isinstance(info, dict) else None


def spec_request(payload: dict[str, Any]) -> tuple[str | None, dict[str, Any]] | None:
    """``(revision, info)`` to look the record's Histograms.json up with, or ``None``
    when it has no histograms to convert (no histograms, or a shape whose
    histograms are not converted).  ``revision`` is ``None`` when the ping has
    none (the spec is then resolved from ``info``'s channel and build id)."""
    histograms = payload.get("histograms")
    if not (isinstance(histograms, dict) and histograms):
        if unified.is_unified(payload):
            return unified.spec_request(payload)
        keyed = payload.get("keyedHistograms")
        if not (isinstance(keyed, dict) and keyed):
            return None
    if fxos.is_fxos(payload):
        return None
    info = payload.get("info")
    info = info if isinstance(info, dict) else {}
    revision = info.get("revision")
    return (revision if isinstance(revision, str) else None), info
