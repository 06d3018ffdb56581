"""pdf.js add-on histogram definitions (``uriloader@pdf.js``), for telemetry-core.

Registered through the entry point ``pdfjs`` in the group ``telemetry``.
The definitions are in Histograms.json form so telemetry-core computes their
bucket layouts with the same rules as Firefox's own histograms.
"""

from __future__ import annotations

from typing import Any

from telemetry_core import hookimpl

ADDON_ID = "uriloader@pdf.js"

DEFINITIONS: dict[str, dict[str, Any]] = {
    "PDF_VIEWER_USED": {"kind": "boolean", "description": "The viewer was used"},
    "PDF_VIEWER_FALLBACK_SHOWN": {"kind": "boolean", "description": "The fallback bar was shown"},
    "PDF_VIEWER_FORM": {"kind": "boolean", "description": "The document has a form"},
    "PDF_VIEWER_DOCUMENT_VERSION": {"kind": "linear", "low": 1, "high": 10, "n_buckets": 11,
                                    "description": "PDF version of the document"},
    "PDF_VIEWER_DOCUMENT_GENERATOR": {"kind": "linear", "low": 1, "high": 25, "n_buckets": 26,
                                      "description": "Program that generated the document"},
    "PDF_VIEWER_STREAM_TYPES": {"kind": "linear", "low": 1, "high": 9, "n_buckets": 10,
                                "description": "Stream filters used by the document"},
    "PDF_VIEWER_DOCUMENT_SIZE_KB": {"kind": "exponential", "low": 2, "high": 65536, "n_buckets": 20,
                                    "description": "Document size in KiB"},
    "PDF_VIEWER_TIME_TO_VIEW_MS": {"kind": "exponential", "low": 1, "high": 10000, "n_buckets": 50,
                                   "description": "Time until the first page is shown, in ms"},
}


@hookimpl
def telemetry_convert_addon_histograms(addon_id: str) -> dict[str, dict[str, Any]] | None:
    return DEFINITIONS if addon_id == ADDON_ID else None
