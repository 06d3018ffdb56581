"""Refuse submissions whose update channel is not on an allow list.

Configure it in plugins.yaml::

    plugins:
      allowlist:
        channels: [release, beta]

and see what it refused with ``telemetry allowlist --config plugins.yaml``.
"""

from __future__ import annotations

import click

from telemetry_core import hookimpl
from telemetry_core.config.options import Option, Section
from telemetry_core.records import Rejection

SECTION = "allowlist"


class ChannelAllowlist:
    """The plugin object registered through the entry point (one per process)."""

    def __init__(self) -> None:
        self.channels: frozenset[str] = frozenset()

    @hookimpl
    def telemetry_config_schema(self) -> dict[str, Section]:
        return {SECTION: Section(help="Accept only these update channels", fields={
            "channels": Option("list", ["release", "beta", "aurora", "nightly"], items="str",
                               help="Update channels to accept; others get 403"),
        })}

    @hookimpl
    def telemetry_configure(self, config) -> None:
        self.channels = frozenset(config.plugin_section(SECTION)["channels"])

    @hookimpl
    def telemetry_receive_validate(self, submission) -> Rejection | None:
        channel = submission.dims.get("appUpdateChannel")
        if channel is not None and channel not in self.channels:
            return Rejection(403, "channel_not_allowed", f"update channel {channel!r} is not accepted here")
        return None

    @hookimpl
    def telemetry_register_commands(self, cli: click.Group) -> None:
        @cli.command(name="allowlist")
        @click.option("--config", "config_path", default=None, help="YAML config.")
        def show_allowlist(config_path: str | None) -> None:
            """Print the update channels this node accepts."""
            from telemetry_core.engine import Engine

            Engine.from_config(config_path, configure_logs=False)
            click.echo(" ".join(sorted(self.channels)))


plugin = ChannelAllowlist()
