"""Node ids and the logging setup."""

from __future__ import annotations

import logging
import multiprocessing
import re

import pytest

from telemetry_core.config.keys import NODE_ID_PATTERN
from telemetry_core.errors import ConfigError
from telemetry_core.config.logging_setup import DEFAULT_FORMAT, configure_logging, set_node_id
from telemetry_core.node import resolve_node_id


def test_configured_node_id_is_used_as_is(tmp_path):
    assert resolve_node_id("edge-3", tmp_path) == "edge-3"
    assert not (tmp_path / "node_id").exists()


def test_auto_node_id_is_created_once_and_kept(tmp_path):
    first = resolve_node_id("auto", tmp_path / "data")
    assert re.fullmatch(NODE_ID_PATTERN, first)
    assert resolve_node_id("auto", tmp_path / "data") == first
    assert (tmp_path / "data" / "node_id").read_text() == first + "\n"


def _resolve(path):
    return resolve_node_id("auto", path)


def test_concurrent_processes_agree_on_the_auto_id(tmp_path):
    # Plain processes joined with a deadline, not a Pool: leaving ``with Pool()`` calls terminate(),
    # and a spawn worker still starting up (pytest-cov hooks its SIGTERM) could outlive it and hang
    # the join for minutes.
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_resolve_into, args=(tmp_path, results)) for _ in range(8)]
    for process in processes:
        process.start()
    try:
        ids = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    assert len(set(ids)) == 1
    assert all(process.exitcode == 0 for process in processes)


def _resolve_into(path, results):
    results.put(_resolve(path))


def test_tampered_node_id_file_is_an_error(tmp_path):
    (tmp_path / "node_id").write_text("../../etc\n")
    with pytest.raises(ConfigError, match="not a valid node id"):
        resolve_node_id("auto", tmp_path)


def test_default_format_carries_node_id(capsys):
    configure_logging({"level": "INFO"})
    set_node_id("node-9")
    logging.getLogger("telemetry_core.test").info("hello")
    err = capsys.readouterr().err
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO \[node-9\] telemetry_core.test: hello", err)
    configure_logging({"level": "WARNING"})  # reconfiguring replaces, not duplicates, the handler
    logging.getLogger("telemetry_core.test").warning("once")
    assert capsys.readouterr().err.count("once") == 1
    assert "%(node_id)s" in DEFAULT_FORMAT


def test_dict_config_and_its_errors(tmp_path):
    log_file = tmp_path / "t.log"
    configure_logging({"version": 1, "disable_existing_loggers": False,
                       "formatters": {"f": {"format": "%(node_id)s|%(message)s"}},
                       "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file),
                                             "formatter": "f"}},
                       "loggers": {"dictcfg": {"handlers": ["file"], "level": "INFO"}}})
    set_node_id("n-2")
    logging.getLogger("dictcfg").info("via dictConfig")
    for handler in logging.getLogger("dictcfg").handlers:
        handler.flush()
    assert log_file.read_text() == "n-2|via dictConfig\n"
    with pytest.raises(ConfigError, match="logging: invalid dictConfig"):
        configure_logging({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}})
