"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
a real mesh, real traffic, the page's numbers following what happens to it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from meshkit.observe.dashboard import LISTENING
from meshkit.testing import Mesh, MeshProcess, ServiceProcess
from tests.observe.helpers import Traffic

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="chromium is not installed (make chromium)"
    ),
    pytest.mark.timeout(180),
]
WAIT_MS = 30_000


@pytest.fixture
def dashboard(mesh: Mesh) -> Iterator[str]:
    process = MeshProcess(
        [
            "dashboard",
            "--registry",
            mesh.registry.address,
            "--port",
            "0",
            "--interval",
            "0.5",
            "--app",
            "tests.apps.caller:app",
        ],
        ready=LISTENING,
        name="dashboard",
    )
    with process:
        assert process.match is not None
        yield process.match["url"]


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1400})
            yield context.new_page()
        finally:
            browser.close()


def _number(text: str) -> float:
    return float(text.split()[0].rstrip("%"))


def test_the_page_follows_traffic_and_instance_kills(
    mesh: Mesh, dashboard: str, page: Page, tmp_path: Path
) -> None:
    upstreams: list[ServiceProcess] = mesh.start("tests.apps.upstream:app", "upstream", instances=2)
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    p = page
    p.goto(dashboard)
    edge_row = p.locator('#edges tr[data-edge="caller->upstream"]')
    front_row = p.locator('#edges tr[data-edge="tester->caller"]')
    with Traffic(mesh.connect(caller, as_="tester")) as traffic:
        # Nodes, edges and numbers appear.
        for node in ("caller", "upstream", "tester"):
            expect(p.locator(f'#topology [data-node="{node}"]')).to_be_visible(timeout=WAIT_MS)
        expect(p.locator('#topology [data-edge="caller->upstream"]')).to_be_attached(
            timeout=WAIT_MS
        )
        expect(edge_row.locator(".success")).to_have_text("100%", timeout=WAIT_MS)
        expect(edge_row.locator(".rps")).not_to_have_text("0.00", timeout=WAIT_MS)
        assert _number(edge_row.locator(".rps").inner_text()) > 0
        assert _number(edge_row.locator(".p99").inner_text()) > 0
        expect(p.locator('[data-series="caller->upstream"] polyline')).to_be_attached()
        expect(p.locator('[data-policies="caller"]')).to_contain_text("/call")
        expect(p.locator('[data-service="upstream"] tbody tr')).to_have_count(2)
        p.screenshot(path=str(tmp_path / "dashboard-traffic.png"), full_page=True)

        # One upstream instance killed: its row says so, its service's node too.
        mesh.kill(upstreams[0])
        expect(p.locator('[data-service="upstream"] .down')).to_have_count(1, timeout=WAIT_MS)
        expect(p.locator('#topology [data-node="upstream"]')).to_have_class(
            re.compile("degraded"), timeout=WAIT_MS
        )
        expect(p.locator('#topology [data-node="upstream"]')).to_contain_text("1/2")

        # Both killed: the calls fail and the edges into the caller turn failing.
        mesh.kill(upstreams[1])
        expect(front_row).to_have_class(re.compile("failing"), timeout=WAIT_MS)
        expect(p.locator('#topology [data-edge="tester->caller"]')).to_have_class(
            re.compile("failing"), timeout=WAIT_MS
        )
        assert _number(front_row.locator(".success").inner_text()) < 95
        p.screenshot(path=str(tmp_path / "dashboard-failing.png"), full_page=True)
        traffic.stop()
        assert 0 < traffic.statuses.count(200) < len(traffic.statuses)

    # Traffic stopped: the rate falls to zero once the window has passed.
    expect(front_row.locator(".rps")).to_have_text("0.00", timeout=WAIT_MS)
    assert (tmp_path / "dashboard-traffic.png").stat().st_size > 10_000


def test_the_page_loads_nothing_from_elsewhere(dashboard: str, page: Page) -> None:
    """Offline: every request the page makes goes to the dashboard itself."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(dashboard)
    expect(page.locator("#status")).to_have_text("Live", timeout=WAIT_MS)
    assert requested and all(url.startswith(dashboard) for url in requested)


# The WCAG contrast ratio of an element's text against the first opaque background
# behind it, computed by the browser from the styles it applied.
CONTRAST = """(selector) => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const background = (node) => {
    for (; node; node = node.parentElement) {
      const c = rgb(getComputedStyle(node).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const luminance = ([r, g, b]) => {
    const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const node = document.querySelector(selector);
  const [a, b] = [luminance(rgb(getComputedStyle(node).color)), luminance(background(node))];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""
TEXTS = ("h1", "h2", ".hint", "#edges caption", "#edges th", "footer p", "header nav a")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_is_legible_in_light_and_dark_mode(
    dashboard: str, page: Page, scheme: Literal["light", "dark"]
) -> None:
    page.emulate_media(color_scheme=scheme)
    page.goto(dashboard)
    expect(page.locator("#status")).to_have_text("Live", timeout=WAIT_MS)
    body = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert body == ("rgb(255, 255, 255)" if scheme == "light" else "rgb(15, 20, 25)")
    for selector in TEXTS:
        assert page.evaluate(CONTRAST, selector) >= 4.5, selector  # WCAG AA, normal text
    # Every table has a caption, every column header a scope; the pictures have text.
    assert page.locator("table:not(:has(caption))").count() == 0
    assert page.locator("th:not([scope])").count() == 0
    assert page.get_attribute("#topology", "role") == "img"
    assert page.locator("#topology-desc").text_content()
