"""Receive hooks at work in a running edge: third-party plugins refuse, add routes, override
path parsing; the built-in enrichment records client addresses behind trusted proxies."""

from __future__ import annotations

import textwrap

import pytest

from edge_fixtures import DIMS, ThreadedEdge, get, new_id, post

THIRD_PARTY = '''
    from aiohttp import web
    from telemetry_core import hookimpl
    from telemetry_core.interfaces import Route
    from telemetry_core.records import Rejection, SubmissionPath

    SEEN = []

    @hookimpl
    def telemetry_receive_validate(submission):
        if submission.dims.get("appUpdateChannel") == "nightly":
            return Rejection(403, "channel_not_allowed", "nightly is not collected here")
        return None

    @hookimpl
    def telemetry_receive_enrich(submission):
        submission.extra["seen_by"] = "third_party"

    @hookimpl
    def telemetry_receive_accepted(submission):
        SEEN.append(submission.id)
        if submission.dims.get("reason") == "explode":
            raise RuntimeError("observer broke")

    @hookimpl
    def telemetry_receive_parse_path(path):
        if path.startswith("legacy:"):
            return SubmissionPath(id=path[7:], dims={"reason": "legacy"})
        return None

    async def seen(request):
        return web.json_response({"seen": SEEN})

    @hookimpl
    def telemetry_receive_routes(engine):
        return [Route("GET", "/third-party/seen", seen)]
'''


@pytest.fixture
def edge(tmp_path):
    plugin = tmp_path / "third_party.py"
    plugin.write_text(textwrap.dedent(THIRD_PARTY))
    server = ThreadedEdge(tmp_path, [f"plugins.load=[{plugin}]"]).start()
    yield server
    server.stop()


def test_a_third_party_plugin_refuses_submissions(edge):
    answer = post(edge.port, f"/submit/telemetry/{new_id()}/idle-daily/Firefox/26.0a1/nightly/2013", b"{}")
    assert answer.status == 403 and answer.text == "channel_not_allowed: nightly is not collected here\n"
    assert post(edge.port, f"/submit/telemetry/{new_id()}/{DIMS}", b"{}").status == 200
    assert len(edge.records()) == 1
    assert edge.rejected() == {"channel_not_allowed": 1}


def test_a_third_party_plugin_adds_a_route_and_observes_accepted_submissions(edge):
    ident = new_id()
    assert post(edge.port, f"/submit/telemetry/{ident}/{DIMS}", b"{}").status == 200
    answer = get(edge.port, "/third-party/seen")
    assert answer.status == 200 and answer.json() == {"seen": [ident]}


def test_a_failing_accepted_observer_does_not_unacknowledge_a_spooled_submission(edge):
    ident = new_id()
    assert post(edge.port, f"/submit/telemetry/{ident}/explode/Firefox/1/release/2", b"{}").status == 200
    assert [r.path.split("/")[0] for r in edge.records()] == [ident]
    assert edge.stats.accepted_hook_errors == 1


def test_a_third_party_path_parser_wins_over_the_builtin(edge):
    assert post(edge.port, "/submit/telemetry/legacy:abc", b"{}").status == 200
    assert post(edge.port, "/submit/telemetry/abc", b"{}").status == 400  # still the built-in rules
    assert [r.path for r in edge.records()] == ["legacy:abc"]


def test_client_address_is_not_recorded_by_default(tmp_path):
    edge = ThreadedEdge(tmp_path).start()
    try:
        post(edge.port, f"/submit/telemetry/{new_id()}", b"{}", {"X-Forwarded-For": "198.51.100.7"})
    finally:
        edge.stop()
    assert [r.client_addr for r in edge.records()] == [None]


def test_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(tmp_path):
    edge = ThreadedEdge(tmp_path, ["receive.record_client_addr=true",
                                   "receive.trusted_proxies=[127.0.0.0/8, 10.0.0.0/8]"]).start()
    try:
        for forwarded in ("198.51.100.7", "203.0.113.9, 198.51.100.7", "198.51.100.7, 10.1.2.3",
                          "not an address", None):
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}", headers).status == 200
    finally:
        edge.stop()
    assert [r.client_addr for r in edge.records()] == [
        "198.51.100.7",   # the proxy saw this client
        "198.51.100.7",   # the right-most untrusted hop; 203.0.113.9 could be forged by the client
        "198.51.100.7",   # 10.1.2.3 is another trusted proxy
        "127.0.0.1",      # unusable header: the peer
        "127.0.0.1",      # no header: the peer
    ]


def test_an_untrusted_peer_cannot_forge_its_address(tmp_path):
    edge = ThreadedEdge(tmp_path, ["receive.record_client_addr=true", "receive.trusted_proxies=[10.0.0.0/8]"]).start()
    try:
        post(edge.port, f"/submit/telemetry/{new_id()}", b"{}", {"X-Forwarded-For": "198.51.100.7"})
    finally:
        edge.stop()
    assert [r.client_addr for r in edge.records()] == ["127.0.0.1"]
