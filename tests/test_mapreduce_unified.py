"""The unified-ping example job (examples/jobs/unified_pings.py) on the local executor, over
unified pings of every type converted by the real processor; answers computed from the pings."""

from __future__ import annotations

import json
import lzma

import pytest

from mapreduce_helpers import FILTERS, JOBS, as_ints, build_unified_dataset, read_output
from telemetry_core.reduce.runner import run_job


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    return build_unified_dataset(tmp_path_factory.mktemp("mapreduce-unified"))


def test_unified_pings_are_counted_by_type_and_channel(unified, tmp_path):
    output = tmp_path / "unified_pings.out"
    stats = run_job(unified.engine(), job_path=JOBS / "unified_pings.py", filter_path=FILTERS / "all.json",
                    output=output, mappers=2, reducers=2)
    expected = unified.unified_counts()
    assert {key.split("/")[0] for key in expected} == {"main", "saved-session", "activation", "deletion"}
    assert as_ints(read_output(output)) == expected
    assert stats["errors"] == 0 and stats["records"] == len(unified.pings)  # the classic ones were read, skipped


def test_the_archive_holds_converted_unified_pings(unified):
    shapes = set()
    for path in unified.data_dir.joinpath("archive").rglob("*.xz"):
        if "_invalid" in path.parts:
            continue
        for line in lzma.decompress(path.read_bytes()).splitlines():
            payload = json.loads(line.partition(b"\t")[2])
            if payload.get("version") == 5:
                shapes.add((payload["info"]["reason"], "payload" in payload, payload.get("ver")))
                if payload["info"]["reason"] == "saved-session":
                    assert isinstance(payload["histograms"]["CACHE_DISK_SEARCH_2"], list)
                    assert payload["info"]["OS"] in ("WINNT", "Darwin", "Linux")
    assert shapes == {("main", True, None), ("saved-session", False, 5), ("activation", True, None),
                      ("deletion", True, None)}
