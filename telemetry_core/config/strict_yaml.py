"""YAML as configs are read: safe, no duplicate keys, no anchors or aliases.

Imported when a config file or a ``--set`` value is parsed, not before
(PyYAML takes a noticeable part of a command's start-up).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml import YAMLError

__all__ = ["YAMLError", "load"]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and anchors/aliases.

    Aliases are refused because a few nested ones expand into billions of
    nodes when the tree is walked (the "billion laughs" attack).
    """

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML API
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in telemetry configs; repeat the value",
                event.start_mark)
        node = super().compose_node(parent, index)
        if getattr(node, "anchor", None) is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "YAML anchors (&name) are not allowed in telemetry configs", node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse ``text`` with :class:`_StrictLoader`; raises :class:`YAMLError`."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
