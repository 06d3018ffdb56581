"""A description of every hook spec, for ``telemetry hooks``, the docs and the meta-tests."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pluggy

from . import hookspecs

STAGES = ("receive", "store", "convert", "dedup", "compress", "reduce")


@dataclass(frozen=True)
class HookDescription:
    name: str
    arguments: tuple[str, ...]
    summary: str
    firstresult: bool
    stage: str

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.arguments)})"


def hook_descriptions() -> list[HookDescription]:
    """Every hook spec in :mod:`telemetry_core.hookspecs`, in source order."""
    parser = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    out = []
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        opts = parser.parse_hookspec_opts(hookspecs, name)
        if opts is None:
            continue
        stage = name.split("_")[1] if name.split("_")[1] in STAGES else "lifecycle"
        summary = (inspect.getdoc(function) or "").strip().splitlines()[0]
        arguments = tuple(inspect.signature(function).parameters)
        out.append(HookDescription(name, arguments, summary, bool(opts.get("firstresult")), stage))
    out.sort(key=lambda d: inspect.getsourcelines(getattr(hookspecs, d.name))[1])
    return out
