"""Declarations of configuration options: what a key accepts and its default.

The core options live in :mod:`telemetry_core.config.keys`; plugins declare
the options of their own ``plugins.<name>`` section by returning a
:class:`Section` from the ``telemetry_config_schema`` hook.  Validation
(:func:`telemetry_core.config.loader.validate`) walks these declarations, so every
key has a type, a default and a line of help, and ``telemetry config show``
can print all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

#: Scalar and container kinds an :class:`Option` can accept.
KINDS = ("str", "int", "float", "bool", "list", "dict", "path", "any")


@dataclass(frozen=True)
class Option:
    """One configuration key.

    ``kind`` is one of :data:`KINDS` (``path`` is a string resolved against
    the config file's directory); ``default`` is used when the key is absent;
    ``help`` is the one-line documentation.  ``choices``, ``minimum``,
    ``maximum``, ``pattern`` and ``check`` narrow the accepted values;
    ``nullable`` admits ``null``; ``secret`` keeps the value out of logs and
    ``config show``; ``must_exist`` (paths) requires the file to exist;
    ``items`` is the kind of each element of a ``list``.  ``auto`` admits the
    string ``"auto"`` besides the kind (resolved later by the code that reads
    the key).
    """

    kind: str
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    nullable: bool = False
    secret: bool = False
    must_exist: bool = False
    items: str | None = None
    auto: bool = False
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.items is not None and self.items not in KINDS:
            raise ValueError(f"unknown list item kind {self.items!r}")

    def expected(self) -> str:
        """Describe the accepted values in a few words, for error messages."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "list" and self.items:
            text = f"a list of {self.items}"
        else:
            text = {"str": "a string", "int": "an integer", "float": "a number",
                    "bool": "true or false", "list": "a list", "dict": "a mapping",
                    "path": "a file or directory path", "any": "any value"}[self.kind]
        if self.minimum is not None and self.maximum is not None:
            text += f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            text += f" >= {self.minimum:g}"
        elif self.maximum is not None:
            text += f" <= {self.maximum:g}"
        if self.pattern:
            text += f" matching {self.pattern}"
        if self.auto:
            text += ' or "auto"'
        if self.nullable:
            text += " or null"
        return text

    def problem(self, value: Any) -> str | None:
        """Return what is wrong with ``value``, or ``None`` when it is acceptable."""
        if value is None:
            return None if self.nullable else "must not be null"
        if self.auto and value == "auto":
            return None
        wrong = _kind_problem(self.kind, value)
        if wrong:
            return wrong
        if self.kind == "list" and self.items:
            for index, item in enumerate(value):
                item_problem = _kind_problem(self.items, item)
                if item_problem:
                    return f"item {index} {item_problem}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not allowed"
        if self.minimum is not None and value < self.minimum:
            return f"{value!r} is too small"
        if self.maximum is not None and value > self.maximum:
            return f"{value!r} is too large"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return f"{value!r} has the wrong form"
        if self.check is not None:
            return self.check(value)
        return None


def _kind_problem(kind: str, value: Any) -> str | None:
    ok = {
        "str": lambda v: isinstance(v, str),
        "path": lambda v: isinstance(v, str) and v != "" and "\0" not in v,
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
        "any": lambda v: True,
    }[kind](value)
    return None if ok else f"has type {_type_name(value)}"


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Section:
    """A mapping of named options and sub-sections.

    ``nullable`` sections may be ``null`` as a whole (meaning "off");
    ``open`` sections accept keys they do not declare (their values are not
    checked): ``logging`` uses it, because ``logging.config.dictConfig``
    validates its own schema.
    """

    fields: dict[str, "Option | Section"] = field(default_factory=dict)
    help: str = ""
    nullable: bool = False
    open: bool = False
    default_null: bool = False

    def defaults(self) -> dict[str, Any] | None:
        """The section with every default filled in (``None`` for a null default)."""
        if self.default_null:
            return None
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            out[name] = spec.defaults() if isinstance(spec, Section) else _copy(spec.default)
        return out


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def walk_options(section: Section, prefix: str = ""):
    """Yield ``(dotted key, Option | Section)`` for every declaration under ``section``."""
    for name, spec in section.fields.items():
        key = f"{prefix}{name}"
        yield key, spec
        if isinstance(spec, Section):
            yield from walk_options(spec, key + ".")
