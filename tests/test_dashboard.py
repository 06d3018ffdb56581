"""The dashboard and the histogram report in a real browser: headless Chromium driven by Playwright.

Chromium is the system's (Debian package ``chromium``; ``bash .ci/run``
installs it and Playwright for Python): ``playwright install`` would download
a browser from a CDN.  ``TELEMETRY_CHROMIUM`` names another binary.  Without
either the tests skip, or fail under ``TELEMETRY_REQUIRE_COMPONENTS=1``.
Screenshots go to the test's directory, and to ``TELEMETRY_SCREENSHOTS``
when it is set (docs/images/dashboard.png was taken that way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import require_component
from edge_fixtures import REPO, TELEMETRY, EdgeNode, get
from test_observability import BROKEN, PINGS, processed, run_node, send_pings, wait_for


def chromium_path() -> str | None:
    configured = os.environ.get("TELEMETRY_CHROMIUM")
    if configured:
        return configured if os.path.exists(configured) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_component("Playwright for Python is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        require_component("Chromium is not installed (apt-get install chromium; bash .ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def keep_screenshot(path: Path) -> None:
    target = os.environ.get("TELEMETRY_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def shown_number(page, selector: str) -> int:
    return int(page.inner_text(selector).replace(",", ""))


def test_the_dashboard_shows_what_status_says(tmp_path, browser):
    node = run_node(tmp_path)
    try:
        send_pings(node)
        wait_for(lambda: processed(node, PINGS + BROKEN), what="the pings to be processed")
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(f"http://127.0.0.1:{node.port}/dashboard")
        page.wait_for_function("document.body.dataset.updated !== undefined")
        page.wait_for_timeout(2500)  # one more refresh, after every process published its final figures
        status = get(node.port, "/status").json()
        for name in ("accepted", "rejected", "processed", "published", "quarantined", "parked"):
            assert shown_number(page, f'[data-total="{name}"]') == status["totals"][name], name
        assert status["totals"]["processed"] == PINGS and status["totals"]["quarantined"] == BROKEN
        assert status["totals"]["rejected"] == 0  # the page itself asks for nothing the edge does not serve
        assert page.inner_text("#node-id") == "obs"
        assert shown_number(page, "#backlog-files") == status["spool_backlog"]["files"]
        assert shown_number(page, '#quarantine tr[data-key="total"] td.num') == BROKEN
        for category, count in status["node"]["processor"]["invalid"].items():
            assert shown_number(page, f'#quarantine tr[data-key="{category}"] td.num') == count
        convert_calls = status["processes"]["processor-0"]["stats"]["hooks"]["telemetry_convert_payload"]["calls"]
        row = page.locator('#hooks tr[data-key="telemetry_convert_payload@processor-0"] td')
        assert int(row.nth(2).inner_text().replace(",", "")) == convert_calls >= PINGS
        assert row.nth(4).inner_text().endswith(" ms")  # p50
        processes = page.locator("#processes tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
        assert {"run", "processor-0", "worker-0", "supervisor"} <= set(processes)
        assert page.locator("#chart-accepted svg").count() == 1
        assert "GB" in page.inner_text("#disk-free") or "MB" in page.inner_text("#disk-free")
        assert page.locator("#error").is_hidden()
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        keep_screenshot(shot)
    finally:
        assert node.stop() == 0, node.log()


def test_the_dashboard_asks_for_the_admin_token_once(tmp_path, browser):
    node = EdgeNode(tmp_path / "node", node_id="tok", overrides=["admin.token=s3cret"]).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{node.port}/dashboard")
        page.fill("#token", "s3cret")
        page.click("button[type=submit]")
        page.wait_for_function("document.body.dataset.updated !== undefined")
        assert page.inner_text("#node-id") == "tok"
        page.goto(f"http://127.0.0.1:{node.port}/dashboard")  # kept: not asked again
        page.wait_for_function("document.body.dataset.updated !== undefined")
        assert page.locator("#token").count() == 0
        context.close()
    finally:
        node.stop()


def test_the_histogram_report_draws_a_chart_per_histogram(tmp_path, browser):
    node = run_node(tmp_path)
    try:
        send_pings(node, broken=0)
        wait_for(lambda: processed(node, PINGS), what="the pings to be processed")
    finally:
        assert node.stop() == 0, node.log()
    args = ["--config", str(node.config)] + sum((["--set", o] for o in node.overrides), [])
    output = tmp_path / "histograms.txt"
    job = subprocess.run([TELEMETRY, "mapreduce", "--job", str(REPO / "examples/jobs/histogram_aggregate.py"),
                          "--filter", str(REPO / "examples/filters/all.json"), "--output", str(output), *args],
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    page_path = tmp_path / "report.html"
    made = subprocess.run([TELEMETRY, "report", str(output), "--html", str(page_path)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    names = {line.split("[", 1)[0] for line in output.read_text().splitlines()}
    page = browser.new_page(viewport={"width": 900, "height": 1200})
    page.goto(page_path.as_uri())
    page.wait_for_function("document.body.dataset.rendered !== undefined")
    assert int(page.evaluate("document.body.dataset.rendered")) == len(names) > 0
    assert page.locator("section.histogram svg").count() == len(names)
    first = sorted(names)[0]
    lines = [line for line in output.read_text().splitlines() if line.startswith(first + "[")]
    bars = page.locator(f'section[data-histogram="{first}"] rect.chart-bar')
    assert bars.count() == len(lines)  # one bar per bucket, labelled with the revision's lower bound
    assert page.locator(f'section[data-histogram="{first}"] text.chart-axis').count() >= 2
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=False)
    keep_screenshot(shot)
