"""Loading ``plugins.yaml``: parse, expand ``${VAR}``, apply ``--set``, validate.

Loading happens in two steps because plugins may declare options:

1. :func:`read_config` parses the file and the ``--set`` overrides into a
   :class:`RawConfig` (plain data, nothing validated except the YAML itself);
   the engine reads ``plugins.disabled``/``load``/``skip_broken`` from it to
   load plugins;
2. :func:`validate` checks the raw data against the core schema plus the
   plugins' sections and returns a :class:`Config` with every default filled
   in and every path resolved.

Every problem is a :class:`~telemetry_core.errors.ConfigError` naming the
file (or ``--set``), the dotted key and what was expected; validation reports
all problems at once, one per line.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .keys import CORE_SCHEMA
from ..errors import ConfigError
from ..redaction import REDACTED, redact_mapping
from .options import Option, Section

#: Config files larger than this are refused (a config is a few KiB).
MAX_CONFIG_BYTES = 1 << 20
SET_SOURCE = "--set"
_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


@dataclass
class RawConfig:
    """Parsed, expanded, overridden but not yet validated configuration data."""

    data: dict[str, Any]
    source: str
    base_dir: Path
    secret_keys: set[str] = field(default_factory=set)
    set_keys: set[str] = field(default_factory=set)

    def plugin_selection(self) -> tuple[list[str], list[str], bool]:
        """Return ``(disabled, load, skip_broken)`` from the ``plugins`` section,
        checked just enough to load plugins with."""
        section = self.data.get("plugins") or {}
        if not isinstance(section, dict):
            raise ConfigError("must be a mapping", source=self.source, key="plugins")
        values = []
        for key, option in (("disabled", CORE_SCHEMA.fields["plugins"].fields["disabled"]),
                            ("load", CORE_SCHEMA.fields["plugins"].fields["load"]),
                            ("skip_broken", CORE_SCHEMA.fields["plugins"].fields["skip_broken"])):
            value = section.get(key, option.default)
            problem = option.problem(value)
            if problem:
                raise ConfigError(problem, source=self._source_of(f"plugins.{key}"),
                                  key=f"plugins.{key}", expected=option.expected())
            values.append(value)
        return values[0], values[1], values[2]

    def _source_of(self, key: str) -> str:
        return SET_SOURCE if _covered(key, self.set_keys) else self.source


class Config:
    """Validated configuration, with every default filled in.

    Read values with ``config.get("receive.port")`` or ``config["receive"]``;
    a plugin reads its own section with ``config.plugin_section(name)``.
    Paths are absolute.  ``source`` is the file the values came from.
    """

    def __init__(self, data: dict[str, Any], *, source: str, base_dir: Path,
                 secret_keys: Iterable[str] = ()) -> None:
        self.data = data
        self.source = source
        self.base_dir = base_dir
        self.secret_keys = frozenset(secret_keys)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, dotted: str, default: Any = None) -> Any:
        """Return the value at a dotted key path, or ``default`` when absent."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def plugin_section(self, name: str) -> dict[str, Any]:
        """The ``plugins.<name>`` section (defaults filled when the plugin declared options)."""
        section = self.data["plugins"].get(name)
        return section if isinstance(section, dict) else {}

    @property
    def data_dir(self) -> Path:
        return Path(self.data["data_dir"])

    def redacted(self) -> dict[str, Any]:
        """A copy with every secret value replaced by ``***`` (for display and logs): the keys
        declared secret or filled from ``${VAR}``, credentials in URLs, and keys whose names
        look secret in free-form maps such as ``reduce.spark.conf``
        (:func:`telemetry_core.redaction.redact_mapping`)."""
        out = copy.deepcopy(self.data)
        for key in self.secret_keys:
            _redact(out, key.split("."))
        return redact_mapping(out)


def _redact(node: Any, parts: list[str]) -> None:
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict) and parts[-1] in node and node[parts[-1]] is not None:
        node[parts[-1]] = REDACTED


def _covered(key: str, keys: Iterable[str]) -> bool:
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)


# --------------------------------------------------------------------------- reading


def read_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = (),
                environ: dict[str, str] | None = None) -> RawConfig:
    """Parse a config file (``None`` = no file, all defaults) and apply ``--set`` overrides.

    ``${VAR}`` and ``${VAR:-default}`` in string values are replaced from
    ``environ`` (default ``os.environ``); ``$$`` is a literal ``$``.  Keys
    whose value came from a variable are treated as secrets.
    """
    environ = dict(os.environ) if environ is None else environ
    if path is None:
        data: dict[str, Any] = {}
        source, base_dir = "<defaults>", Path.cwd()
    else:
        source = os.fspath(path)
        base_dir = Path(source).resolve().parent
        data = _parse_file(Path(source))
    secret_keys: set[str] = set()
    data = _expand(data, environ, source, "", secret_keys)
    set_keys: set[str] = set()
    for assignment in overrides:
        key, value = parse_override(assignment)
        value = _expand(value, environ, SET_SOURCE, key, secret_keys)
        _assign(data, key, value)
        set_keys.add(key)
    return RawConfig(data=data, source=source, base_dir=base_dir, secret_keys=secret_keys, set_keys=set_keys)


def _parse_file(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("config file not found; pass an existing file to --config", source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=source) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file is larger than {MAX_CONFIG_BYTES} bytes; is this the right file?",
                          source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    from . import strict_yaml

    try:
        data = strict_yaml.load(text)
    except strict_yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {' '.join(str(problem).split())}", source=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, not {type(data).__name__}", source=source)
    return data


def parse_override(assignment: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is parsed as a YAML scalar, list or mapping."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{assignment!r} is not of the form dotted.key=value", source=SET_SOURCE)
    from . import strict_yaml

    try:
        value = strict_yaml.load(text) if text.strip() else ""
    except strict_yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"value is not valid YAML: {' '.join(str(problem).split())}",
                          source=SET_SOURCE, key=key) from None
    return key, value


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"cannot set a sub-key: {prefix} is {type(child).__name__}, not a mapping",
                              source=SET_SOURCE, key=key)
        node = child
    node[parts[-1]] = value


def _expand(value: Any, environ: dict[str, str], source: str, key: str, secret_keys: set[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for name, child in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"key {name!r} is not a string; quote it", source=source, key=key or None)
            out[name] = _expand(child, environ, source, f"{key}.{name}" if key else name, secret_keys)
        return out
    if isinstance(value, list):
        return [_expand(item, environ, source, f"{key}[{index}]", secret_keys) for index, item in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        used_variable = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used_variable
            if match.group(1) == "$":
                return "$"
            name, default = match.group(2), match.group(3)
            used_variable = True
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (use ${{{name}:-default}} "
                              f"for an optional value)", source=source, key=key)

        expanded = _VAR.sub(replace, value)
        if used_variable:
            secret_keys.add(key.split("[", 1)[0])
        return expanded
    return value


# --------------------------------------------------------------------------- validating


def validate(raw: RawConfig, plugin_sections: dict[str, Section] | None = None,
             disabled_plugins: Iterable[str] = ()) -> Config:
    """Check ``raw`` against the core schema and the plugins' sections.

    ``plugin_sections`` maps plugin names to the :class:`Section` each declared;
    ``disabled_plugins`` names plugins whose sections are accepted unchecked
    (turning a plugin off must not require deleting its config).  Raises one
    :class:`ConfigError` listing every problem.
    """
    schema = _with_plugin_sections(plugin_sections or {})
    problems: list[ConfigError] = []
    secret_keys = set(raw.secret_keys)
    data = _check_section(schema, raw.data, "", raw, problems, secret_keys, set(disabled_plugins))
    if problems:
        if len(problems) == 1:
            raise problems[0]
        error = ConfigError("\n".join(str(p) for p in problems))
        error.problems = problems  # type: ignore[attr-defined]
        raise error
    return Config(data, source=raw.source, base_dir=raw.base_dir, secret_keys=secret_keys)


def _with_plugin_sections(plugin_sections: dict[str, Section]) -> Section:
    plugins = CORE_SCHEMA.fields["plugins"]
    assert isinstance(plugins, Section)
    reserved = set(plugins.fields)
    fields = dict(plugins.fields)
    for name, section in plugin_sections.items():
        if name in reserved:
            raise ConfigError(f"a plugin may not declare the reserved section plugins.{name}")
        fields[name] = section
    core = dict(CORE_SCHEMA.fields)
    core["plugins"] = Section(fields=fields, help=plugins.help)
    return Section(fields=core, help=CORE_SCHEMA.help)


def _check_section(section: Section, value: Any, key: str, raw: RawConfig, problems: list[ConfigError],
                   secret_keys: set[str], disabled: set[str]) -> Any:
    where = raw._source_of(key) if key else raw.source
    if value is None:
        if section.nullable:
            return None
        value = {}
    if not isinstance(value, dict):
        problems.append(ConfigError(f"has type {type(value).__name__}", source=where, key=key or None,
                                    expected="a mapping"))
        return section.defaults()
    out: dict[str, Any] = {}
    for name, item in value.items():
        child_key = f"{key}.{name}" if key else name
        spec = section.fields.get(name)
        if spec is None:
            if key == "plugins" and name in disabled:
                out[name] = item
            elif section.open:
                out[name] = item
            else:
                known = ", ".join(sorted(section.fields)) or "none"
                hint = (f"no loaded plugin declares this section" if key == "plugins"
                        else f"known keys here: {known}")
                problems.append(ConfigError(f"unknown key ({hint})", source=raw._source_of(child_key),
                                            key=child_key))
            continue
        if isinstance(spec, Section):
            out[name] = _check_section(spec, item, child_key, raw, problems, secret_keys, disabled)
        else:
            out[name] = _check_option(spec, item, child_key, raw, problems)
            if spec.secret:
                secret_keys.add(child_key)
    for name, spec in section.fields.items():
        if name in out:
            continue
        child_key = f"{key}.{name}" if key else name
        if isinstance(spec, Section):
            out[name] = None if spec.default_null else _check_section(
                spec, {}, child_key, raw, problems, secret_keys, disabled)
        else:
            out[name] = _resolve_path(spec, spec.default, raw, child_key) if spec.default is not None else None
            if spec.secret:
                secret_keys.add(child_key)
    return out


def _check_option(option: Option, value: Any, key: str, raw: RawConfig, problems: list[ConfigError]) -> Any:
    source = raw._source_of(key)
    problem = option.problem(value)
    if problem:
        problems.append(ConfigError(problem, source=source, key=key, expected=option.expected()))
        return option.default
    if option.kind != "path" or value is None:
        return value
    resolved = _resolve_path(option, value, raw, key)
    if option.must_exist and not Path(resolved).exists():
        problems.append(ConfigError(f"file {resolved} does not exist", source=source, key=key,
                                    expected="an existing file"))
    return resolved


def _resolve_path(option: Option, value: Any, raw: RawConfig, key: str) -> Any:
    """Resolve a relative path: against the config file's directory, or the
    working directory for a value given with ``--set``."""
    if option.kind != "path" or not isinstance(value, str):
        return value
    base = Path.cwd() if _covered(key, raw.set_keys) else raw.base_dir
    return str((base / os.path.expanduser(value)).resolve())
