"""Histogram conversion throughput against the orjson parse+serialize limit.

Run from the repository root::

    .venv/bin/python benchmarks/convert.py [--generated 20] [--repeat 7] [--cpu N]

Inputs are JSON bytes of classic (ver 1) payloads: the telemetry1.log
fixture ping (a real Firefox 23 idle-daily submission, converted with the
AURORA_23 spec) and ``--generated`` payloads per fixture revision
(AURORA_23/24/25).  A generated payload has the fixture's ``info`` and
other sections, and the histograms a Firefox of that revision would send:
90% of the fixture ping's histograms (``STARTUP_`` copies included) that
the revision defines, 10-30 other definitions of the revision, GC_REASON_2
(a C++ constant taken from the ping) and one histogram the revision does
not define.  Each has the sparse ``values`` shape Firefox sends (non-zero
buckets, interior zeros omitted, a 0 entry on each side) with random
counts and statistics.

Three ways of turning the same bytes into output bytes are timed over the
whole input set, in rotating order, ``--repeat`` times; the best pass of
each is reported (noise from other processes only ever adds time):

* ``limit``   -- ``orjson.dumps(orjson.loads(body))``: parse + serialize, no conversion;
* ``ceiling`` -- ``orjson.loads(body)`` + ``orjson.dumps`` of the already converted
  payload: a conversion that cost nothing (v2 arrays hold a number for every
  bucket, so they take longer to serialize than the sparse v1 objects);
* ``convert`` -- ``orjson.loads``, :func:`convert_payload`, ``orjson.dumps``: the pipeline;
* ``python``  -- the pipeline without the compiled fast path (``telemetry_core.convert._speedups``),
  as on a machine where the C extension could not be built;
* ``stdlib``  -- the same conversion with ``json.loads``/``json.dumps``.

It prints records/s and MB/s (input bytes) for each, then the ratios
``convert / limit`` (target: at least 0.6 on one core), ``ceiling /
limit`` and ``convert / stdlib``.  Specs are built and warmed before timing, as the revision cache
keeps them.  Single-threaded; ``--cpu`` pins the process to one CPU.  Not a
test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from telemetry_core.convert.buckets import DefinitionError  # noqa: E402
from telemetry_core.convert import conversion  # noqa: E402
from telemetry_core.convert.conversion import convert_payload  # noqa: E402
from telemetry_core.convert.spec import HistogramSpec  # noqa: E402
from telemetry_core.store.spool.files import SpoolReader  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_PING = FIXTURES / "payload_v1_packed_log__telemetry1.log"
REVISIONS = {  # revision URL -> Histograms.json fixture
    "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302":
        "histograms_json__FIREFOX_AURORA_23_BASE__as_a55c55edf302.json",
    "http://hg.mozilla.org/releases/mozilla-aurora/rev/8d3810543edc":
        "histograms_json__FIREFOX_AURORA_24_BASE__as_8d3810543edc.json",
    "http://hg.mozilla.org/releases/mozilla-aurora/rev/ad0ae007aa9e":
        "histograms_json__FIREFOX_AURORA_25_BASE__as_ad0ae007aa9e.json",
}
NON_ZERO_BUCKETS = [1, 1, 1, 2, 2, 3, 4, 6, 9, 14, 20]  # drawn per histogram


def fixture_ping_body() -> bytes:
    (record,) = SpoolReader(FIXTURE_PING)
    return gzip.decompress(record.body)


def packed_histogram(rng: random.Random, bounds: tuple[int, ...], histogram_type: int,
                     value_range: list[int], extended_statistics: bool) -> dict[str, Any]:
    """One histogram as Firefox packs it (HISTOGRAMS.md §2.2), with random contents."""
    non_zero = sorted(rng.sample(range(len(bounds)), min(rng.choice(NON_ZERO_BUCKETS), len(bounds))))
    counts = {position: int(rng.paretovariate(1.2)) for position in non_zero}
    for neighbour in (non_zero[0] - 1, non_zero[-1] + 1):
        if 0 <= neighbour < len(bounds):
            counts.setdefault(neighbour, 0)
    values = {str(bounds[position]): counts[position] for position in sorted(counts)}
    total = sum(bounds[position] * count for position, count in counts.items())
    histogram: dict[str, Any] = {"range": value_range, "bucket_count": len(bounds),
                                 "histogram_type": histogram_type, "values": values, "sum": total}
    if histogram_type == 0:
        log_sum = math.log1p(total) * rng.uniform(0.5, 3.0) if extended_statistics else 0
        histogram.update(log_sum=log_sum, log_sum_squares=log_sum * log_sum if extended_statistics else 0)
    else:
        histogram.update(sum_squares_lo=total * total % 2**32, sum_squares_hi=total * total // 2**32)
    return histogram


def generated_payload(rng: random.Random, spec: HistogramSpec, definitions: dict[str, Any],
                      template: dict[str, Any], revision: str) -> dict[str, Any]:
    """A ping of ``revision``: most of the histograms a real Firefox sends (the
    fixture ping's names that this revision defines, 90% of them), plus 10-30
    other definitions of the revision, GC_REASON_2 and one unknown name."""
    unusable = spec.definition_errors()
    usable = [name for name in definitions if name not in unusable]
    reported = [name for name in template["histograms"] if name in spec and name != "GC_REASON_2"]
    names = [name for name in reported if rng.random() < 0.9]
    others = sorted(set(usable) - set(reported))
    names += rng.sample(others, min(len(others), rng.randint(10, 30)))
    histograms: dict[str, Any] = {}
    for name in sorted(names):
        layout = spec.layout(name)
        assert layout is not None
        definition = definitions[spec.definition_name(name)]
        histograms[name] = packed_histogram(rng, spec.bounds(name), layout.histogram_type, [layout.low, layout.high],
                                            bool(definition.get("extended_statistics_ok")))
    histograms["GC_REASON_2"] = packed_histogram(rng, tuple(range(101)), 1, [1, 100], False)
    histograms["NOT_IN_THIS_REVISION"] = packed_histogram(rng, (0, 1, 2), 2, [1, 2], False)
    info = dict(template["info"], revision=revision)
    return dict(template, info=info, histograms=histograms)


def build_inputs(generated_per_revision: int, seed: int) -> list[tuple[bytes, HistogramSpec]]:
    """(JSON bytes, spec) pairs: the fixture ping first, then the generated payloads."""
    rng = random.Random(seed)
    fixture_body = fixture_ping_body()
    template = orjson.loads(fixture_body)
    inputs = []
    for revision, file_name in REVISIONS.items():
        definitions = orjson.loads((FIXTURES / file_name).read_bytes())
        spec = HistogramSpec(definitions, revision=revision)
        if not inputs:
            inputs.append((fixture_body, spec))
        for _ in range(generated_per_revision):
            payload = generated_payload(rng, spec, definitions, template, revision)
            inputs.append((orjson.dumps(payload), spec))
    return inputs


def limit(body: bytes, spec: HistogramSpec) -> bytes:
    return orjson.dumps(orjson.loads(body))


def ceiling(body: bytes, spec: HistogramSpec) -> bytes:
    """What a conversion costing nothing would take: parse the input, serialize the v2 output."""
    orjson.loads(body)
    return orjson.dumps(CONVERTED[body])


def convert_with_orjson(body: bytes, spec: HistogramSpec) -> bytes:
    payload = orjson.loads(body)
    convert_payload(payload, spec)
    return orjson.dumps(payload)


def convert_in_python(body: bytes, spec: HistogramSpec) -> bytes:
    compiled, conversion._compiled_histograms = conversion._compiled_histograms, None
    try:
        return convert_with_orjson(body, spec)
    finally:
        conversion._compiled_histograms = compiled


def convert_with_stdlib(body: bytes, spec: HistogramSpec) -> bytes:
    payload = json.loads(body)
    convert_payload(payload, spec)
    return json.dumps(payload, separators=(",", ":")).encode()


METHODS: dict[str, Callable[[bytes, HistogramSpec], bytes]] = {
    "limit": limit, "ceiling": ceiling, "convert": convert_with_orjson, "python": convert_in_python,
    "stdlib": convert_with_stdlib,
}
CONVERTED: dict[bytes, dict[str, Any]] = {}  # input body -> its v2 payload, for ``ceiling``


def check_outputs_agree(inputs: list[tuple[bytes, HistogramSpec]]) -> None:
    """The orjson and stdlib conversions give the same payloads (and warm every spec);
    keeps each v2 payload for ``ceiling``."""
    for body, spec in inputs:
        converted = orjson.loads(convert_with_orjson(body, spec))
        if converted != json.loads(convert_with_stdlib(body, spec)) or \
                convert_in_python(body, spec) != convert_with_orjson(body, spec):
            raise SystemExit("convert, python and stdlib outputs differ; fix that before timing")
        CONVERTED[body] = converted


def best_times(inputs: list[tuple[bytes, HistogramSpec]], repeat: int) -> dict[str, float]:
    best = {name: math.inf for name in METHODS}
    names = list(METHODS)
    for round_number in range(repeat):
        for name in names[round_number % len(names):] + names[:round_number % len(names)]:
            method = METHODS[name]
            started = time.perf_counter()
            for body, spec in inputs:
                method(body, spec)
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def command_times(inputs: list[tuple[bytes, HistogramSpec]], copies: int, repeat: int) -> None:
    """``telemetry convert`` on ``copies`` x ``inputs`` as lines, against the orjson limit on the same lines."""
    import subprocess
    import tempfile

    telemetry = str(Path(sys.executable).parent / "telemetry")
    # revisions the seeded cache holds (as benchmarks/process.py), so no Histograms.json is fetched
    lines = b"".join(f"{index:08x}-0000-4000-8000-{index:012x}\t".encode()
                     + body.replace(b"mozilla-aurora", b"mozilla-release") + b"\n"
                     for index, (body, _spec) in enumerate(inputs * copies))
    cache = tempfile.mkdtemp(prefix="bench-convert-cli-")
    records = len(inputs) * copies

    def run(*args: str, stdin: bytes = b"") -> float:
        with tempfile.TemporaryFile() as out:
            start = time.perf_counter()
            subprocess.run([telemetry, *args], input=stdin, stdout=out, stderr=subprocess.DEVNULL, check=False)
            return time.perf_counter() - start

    help_s = min(run("--help") for _ in range(repeat))
    settings = ("--set", f"convert.histograms.cache_dir={cache}")
    empty_s = min(run("convert", *settings) for _ in range(repeat))
    full_s = min(run("convert", *settings, stdin=lines) for _ in range(repeat))
    limit_s = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for line in lines.splitlines():
            record_id, _, body = line.partition(b"\t")
            record_id + b"\t" + orjson.dumps(orjson.loads(body)) + b"\n"
        limit_s = min(limit_s, time.perf_counter() - start)
    command_s = full_s - empty_s
    print(f"{records} lines ({len(lines) / 1e6:.1f} MB), wall clock, best of {repeat}")
    print(f"  start-up: telemetry --help {help_s:.2f} s, telemetry convert on empty input {empty_s:.2f} s")
    print(f"  limit    {records / limit_s:9.0f} records/s (orjson loads + dumps of each line)")
    print(f"  command  {records / command_s:9.0f} records/s (start-up subtracted)")
    print(f"command / limit = {limit_s / command_s:.2f}  (target >= 0.60)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generated", type=int, default=20, help="generated payloads per revision")
    parser.add_argument("--repeat", type=int, default=7, help="timed passes per method (best is kept)")
    parser.add_argument("--seed", type=int, default=2013)
    parser.add_argument("--cpu", type=int, help="pin the process to this CPU")
    parser.add_argument("--cli", action="store_true", help="time the telemetry convert command instead")
    parser.add_argument("--cli-copies", type=int, default=20, help="copies of the inputs fed to the command")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    try:
        inputs = build_inputs(args.generated, args.seed)
    except DefinitionError as error:
        raise SystemExit(f"cannot build the inputs: {error}") from None
    check_outputs_agree(inputs)
    if args.cli:
        return command_times(inputs, args.cli_copies, args.repeat)
    records = len(inputs)
    input_bytes = sum(len(body) for body, _ in inputs)
    histograms = sum(len(orjson.loads(body)["histograms"]) for body, _ in inputs)
    print(f"{records} payloads ({input_bytes / records / 1024:.1f} KiB and "
          f"{histograms / records:.0f} histograms on average), best of {args.repeat} passes")

    best = best_times(inputs, args.repeat)
    for name, seconds in best.items():
        print(f"  {name:8} {records / seconds:9.0f} records/s {input_bytes / seconds / 1e6:8.1f} MB/s "
              f"{seconds / records * 1e6:9.1f} us/record")
    if not conversion.COMPILED:
        print("note: the compiled fast path is not built; 'convert' ran in pure Python too")
    print(f"convert / limit  = {best['limit'] / best['convert']:.2f}  (target >= 0.60)")
    print(f"python / limit   = {best['limit'] / best['python']:.2f}  (without the compiled fast path)")
    print(f"ceiling / limit  = {best['limit'] / best['ceiling']:.2f}  (the best any conversion could do: "
          "the v2 output is denser to serialize)")
    print(f"convert / stdlib = {best['stdlib'] / best['convert']:.2f}")


if __name__ == "__main__":
    main()
