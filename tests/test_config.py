"""Config loading: every error names the file, the key path and what was expected."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from telemetry_core.config.loader import MAX_CONFIG_BYTES, REDACTED, parse_override, read_config, validate
from telemetry_core.config.keys import CORE_SCHEMA
from telemetry_core.errors import ConfigError
from telemetry_core.config.options import Option, Section, walk_options

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="plugins.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, overrides=(), environ=None, sections=None):
    with pytest.raises(ConfigError) as caught:
        validate(read_config(path, overrides, environ=environ or {}), sections)
    return str(caught.value)


def test_shipped_default_config_is_valid_and_local_only():
    config = validate(read_config(REPO / "plugins.yaml"))
    assert config.get("store.publish.backend") == "local"
    assert config.get("dedup.backend") == "sqlite"
    assert (config.get("compress.codec"), config.get("compress.level")) == ("zstd", 0)  # the measured default
    assert config.get("metrics.graphite") is None
    assert config["schema"] == str(REPO / "telemetry_schema.json")
    assert config["data_dir"] == str(REPO / "data")  # relative to the config file, not the cwd


def test_no_file_gives_every_default():
    config = validate(read_config(None))
    for key, spec in walk_options(CORE_SCHEMA):
        if isinstance(spec, Option) and spec.kind != "path" and not key.startswith("metrics.graphite."):
            assert config.get(key) == spec.default, key
    assert config.get("metrics.graphite") is None  # a null-default section: off


def test_every_key_has_help_and_a_valid_default():
    for key, spec in walk_options(CORE_SCHEMA):
        assert spec.help, f"{key} has no help text"
        if isinstance(spec, Option) and spec.default is not None:
            assert spec.problem(spec.default) is None, f"default of {key} is invalid"


def test_unknown_key_names_file_key_and_known_keys(tmp_path):
    path = write(tmp_path, "receive:\n  prot: 8080\n")
    message = error_of(path)
    assert message.startswith(f"{path}: receive.prot: unknown key")
    assert "known keys here: " in message and ", port, " in message


def test_wrong_type_says_what_was_expected(tmp_path):
    message = error_of(write(tmp_path, "receive:\n  port: eighty\n"))
    assert "receive.port: has type string (expected an integer from 0 to 65535)" in message


def test_booleans_are_not_integers(tmp_path):
    assert "has type boolean" in error_of(write(tmp_path, "compress:\n  level: true\n"))


def test_bad_values(tmp_path):
    assert "compress.level: 42 is too large" in error_of(write(tmp_path, "compress: {level: 42}\n"))
    assert "node_id: '../etc' has the wrong form" in error_of(write(tmp_path, "node_id: ../etc\n"))
    assert "is not an http(s) URL" in error_of(write(tmp_path, "convert: {histograms: {server: 'ftp://x'}}\n"))
    assert "logging.level: 'LOUD' is not allowed" in error_of(write(tmp_path, "logging: {level: LOUD}\n"))


def test_section_of_wrong_type(tmp_path):
    assert "receive: has type list (expected a mapping)" in error_of(write(tmp_path, "receive: [1, 2]\n"))


def test_all_problems_are_reported_at_once(tmp_path):
    message = error_of(write(tmp_path, "receive: {port: x}\ncompress: {level: -1}\nbogus: 1\n"))
    assert len(message.splitlines()) == 3


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_config(tmp_path / "nope.yaml")


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_config(tmp_path)


def test_missing_schema_file(tmp_path):
    message = error_of(write(tmp_path, "schema: missing_schema.json\n"))
    assert f"schema: file {tmp_path / 'missing_schema.json'} does not exist" in message


def test_invalid_yaml_points_at_line_and_column(tmp_path):
    path = write(tmp_path, "receive:\n  port: [8080\n")
    with pytest.raises(ConfigError, match=rf"{path}:3:1: invalid YAML"):
        read_config(path)


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="duplicate key 'port'"):
        read_config(write(tmp_path, "receive:\n  port: 1\n  port: 2\n"))


def test_yaml_aliases_are_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    with pytest.raises(ConfigError, match="aliases"):
        read_config(write(tmp_path, bomb))


def test_python_tags_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_config(write(tmp_path, "node_id: !!python/object/apply:os.system ['true']\n"))


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_config(write(tmp_path, "- a\n- b\n"))


def test_empty_file_means_defaults(tmp_path):
    assert validate(read_config(write(tmp_path, ""))).get("receive.port") == 8080


def test_oversized_and_binary_files(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("w") as handle:
        handle.write("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_config(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"node_id: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(binary)


def test_non_string_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="key 1 is not a string"):
        read_config(write(tmp_path, "receive:\n  1: x\n"))


def test_environment_variables_expand_and_become_secrets(tmp_path):
    path = write(tmp_path, "dedup:\n  backend: redis\n  redis_url: 'redis://:${REDIS_PASSWORD}@db:6379/0'\n"
                           "store:\n  publish:\n    prefix: '${PREFIX:-telemetry}/v2'\n    bucket: 'cost$$center'\n")
    config = validate(read_config(path, environ={"REDIS_PASSWORD": "hunter2"}))
    assert config.get("dedup.redis_url") == "redis://:hunter2@db:6379/0"
    assert config.get("store.publish.prefix") == "telemetry/v2"
    assert config.get("store.publish.bucket") == "cost$center"
    shown = config.redacted()
    assert shown["dedup"]["redis_url"] == REDACTED
    assert shown["store"]["publish"]["prefix"] == REDACTED  # came from a variable: treated as secret
    assert "hunter2" not in repr(shown)


def test_secret_options_are_redacted_even_when_written_in_clear(tmp_path):
    config = validate(read_config(write(tmp_path, "dedup: {redis_url: 'redis://:pw@h/0'}\n")))
    assert config.redacted()["dedup"]["redis_url"] == REDACTED
    assert config.get("dedup.redis_url") == "redis://:pw@h/0"


def test_missing_environment_variable(tmp_path):
    message = error_of(write(tmp_path, "store: {publish: {bucket: '${BUCKET}'}}\n"))
    assert "store.publish.bucket: environment variable BUCKET is not set" in message


def test_overrides_parse_as_yaml_and_may_add_keys(tmp_path):
    path = write(tmp_path, "receive: {port: 8080}\n")
    config = validate(read_config(path, ["receive.port=9090", "receive.workers=3", "compress.codec=gzip",
                                         "plugins.disabled=[a, b]", "metrics.graphite.port=2004"]))
    assert config.get("receive.port") == 9090
    assert config.get("receive.workers") == 3
    assert config.get("plugins.disabled") == ["a", "b"]
    assert config.get("metrics.graphite") == {"host": "127.0.0.1", "port": 2004, "prefix": "telemetry",
                                              "interval": 60.0}


def test_overrides_are_validated_like_the_file(tmp_path):
    message = error_of(write(tmp_path, ""), ["receive.port=99999", "receive.bogus=1"])
    assert "--set: receive.port: 99999 is too large" in message
    assert "--set: receive.bogus: unknown key" in message


@pytest.mark.parametrize("assignment", ["noequals", "=1", "a..b=1", "receive.port=[1", ".a=1"])
def test_malformed_overrides(assignment):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(assignment)


def test_override_cannot_descend_into_a_scalar(tmp_path):
    with pytest.raises(ConfigError, match="receive.port is int, not a mapping"):
        read_config(write(tmp_path, "receive: {port: 1}\n"), ["receive.port.x=1"])


def test_override_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, "data_dir: ./from-file\n")
    monkeypatch.chdir(tmp_path)
    assert validate(read_config(path))["data_dir"] == str(sub / "from-file")
    assert validate(read_config(path, ["data_dir=./from-cli"]))["data_dir"] == str(tmp_path / "from-cli")


def test_plugin_sections(tmp_path):
    sections = {"sampler": Section(fields={"rate": Option("float", 1.0, help="rate", minimum=0, maximum=1)})}
    path = write(tmp_path, "plugins:\n  sampler: {rate: 0.25}\n")
    assert validate(read_config(path), sections).plugin_section("sampler") == {"rate": 0.25}
    assert validate(read_config(None), sections).plugin_section("sampler") == {"rate": 1.0}
    assert "plugins.sampler.rate: 3 is too large" in error_of(write(tmp_path, "plugins: {sampler: {rate: 3}}\n"),
                                                               sections=sections)
    assert "plugins.sampler.speed: unknown key" in error_of(
        write(tmp_path, "plugins: {sampler: {speed: 3}}\n"), sections=sections)


def test_section_of_a_plugin_that_is_not_loaded(tmp_path):
    path = write(tmp_path, "plugins:\n  nosuch: {a: 1}\n")
    assert "plugins.nosuch: unknown key (no loaded plugin declares this section)" in error_of(path)
    config = validate(read_config(path), disabled_plugins=["nosuch"])  # disabled: kept, unchecked
    assert config.plugin_section("nosuch") == {"a": 1}


def test_plugin_selection_is_checked_before_loading(tmp_path):
    raw = read_config(write(tmp_path, "plugins: {disabled: allowlist}\n"))
    with pytest.raises(ConfigError, match="plugins.disabled: has type string"):
        raw.plugin_selection()
    raw = read_config(write(tmp_path, "plugins: {disabled: [a], load: [m], skip_broken: true}\n"))
    assert raw.plugin_selection() == (["a"], ["m"], True)


def test_secrets_never_reach_the_logs(tmp_path, caplog, make_engine):
    caplog.set_level(logging.DEBUG)
    engine = make_engine(**{"dedup.redis_url": "redis://:topsecret@h:1/0"})
    assert "topsecret" not in caplog.text
    assert "topsecret" not in repr(engine.config.redacted())
