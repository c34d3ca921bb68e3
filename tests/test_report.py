"""The HTML report: self-contained, bounded, escaped, secrets masked, and rendered by a real browser.

The browser test drives Debian's headless chromium over the DevTools protocol
(``--remote-debugging-pipe``): it loads the report of the generator's journey
capture, listens for console messages, exceptions and network requests, checks
that every plotly chart became SVG, and saves a screenshot as a test artifact.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time

import pytest

import maildissect
from maildissect.output.report import render_report, write_report
from tests.pcaps import write_pcap
from tests.test_journeys import (MTA_A, T0, UA, analyze_frames, cli_run, journey_analysis, journey_capture,
                                 journey_frames, message, smtp_session)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


class Chromium:
    """Headless chromium driven over the DevTools protocol on a pipe (no port, no network)."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000):
        self.tmp = tempfile.mkdtemp(prefix="md-chromium-")
        to_chrome_r, self.wfd = os.pipe()
        self.rfd, from_chrome_w = os.pipe()

        def child():
            # chromium reads commands on fd 3 and writes replies on fd 4; both ends may
            # already sit on 3 or 4, so they are duplicated out of the way first
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={self.tmp}",
             "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=child, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def _read(self, timeout: float) -> dict:
        end = time.time() + timeout
        while b"\0" not in self.buf:
            left = end - time.time()
            if left <= 0:
                raise TimeoutError("chromium did not answer")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, timeout: float = 120, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read(timeout)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, name: str, timeout: float = 120) -> dict:
        for i, m in enumerate(self.events):
            if m.get("method") == name:
                return self.events.pop(i)
        end = time.time() + timeout
        while True:
            m = self._read(max(0.01, end - time.time()))
            if m.get("method") == name:
                return m
            self.events.append(m)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        end = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.time() > end:
                return value
            time.sleep(0.1)

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def screenshot(self, path: str, clip: dict | None = None) -> None:
        params = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = dict(clip, scale=1)
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.wfd)
        os.close(self.rfd)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def journey_report(tmp_path_factory):
    """The report of the generator's journey capture (path, analysis, info)."""
    pcap, _ = journey_capture()
    a, _ = journey_analysis()
    path = tmp_path_factory.mktemp("report") / "journey.html"
    info = write_report(a, str(path), captures=[pcap])
    return str(path), a, info


def test_self_contained_and_complete(journey_report):
    path, a, info = journey_report
    page = open(path, encoding="utf-8").read()
    from plotly.offline import get_plotlyjs
    assert page.count(get_plotlyjs()[:200]) == 1  # plotly.js inlined exactly once
    # nothing is fetched: no external script, stylesheet, image or frame (plotly.js's own
    # source mentions its web site in strings; the browser test checks what is requested)
    ours = page.replace(get_plotlyjs(), "")
    assert not re.search(r"<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=", ours, re.I)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", ours, re.I)
    assert "@media print" in page
    ids = re.findall(r'\sid="([^"]+)"', ours)
    assert len(ids) == len(set(ids)), "element ids must be unique (links and scripts find elements by id)"
    flows = a.records.flows
    assert 'id="fig-timeline"' in page and 'id="fig-overview"' in page
    for j in a.journey_records.journeys:
        assert f'id="fig-journey-{j.journey_id}"' in page
    assert page.count('id="fig-ladder-') == info["ladders"] == min(25, len(flows))
    assert info["packets_read"] is True
    for table in ("sessions", "messages", "attachments", "credentials", "anomalies", "journeys"):
        assert f'<table id="table-{table}" class="sortable">' in page
    # the ladder of the refused attempt shows SYN answered by RST
    refused = [f for f in flows if f.close == "refused"][0]
    start = page.index(f'id="session-{refused.flow_id}"')
    ladder = page[start:page.index("</div></div>", start)]
    assert '"SYN"' in ladder and '"RST"' in ladder


def test_secrets_masked_unless_asked(journey_report):
    path, a, _ = journey_report
    page = open(path, encoding="utf-8").read()
    secrets = {c.secret for c in a.records.credentials if c.secret and len(c.secret) > 4}
    assert secrets
    for s in secrets:
        assert s not in page
    assert "********" in page
    shown, _ = render_report(a, show_secrets=True, max_ladders=3, max_journeys=1)
    assert all(s in shown for s in secrets)


def test_escaping_and_bounds(tmp_path):
    evil = message("<evil@a.example>", subject="<script>alert(1)</script>")
    frames = smtp_session(UA[:1] + (40009,), MTA_A, [("x@a.example", "bob@b.example", evil, "Q<b>1")], T0 - 100,
                          auth=True, helo="<img src=x onerror=alert(2)>")
    frames += journey_frames()
    a, path = analyze_frames(tmp_path, sorted(frames, key=lambda f: f[0]))
    page, info = render_report(a, captures=[path], max_ladders=2, max_journeys=1, max_lanes=3, max_rows=1)
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('id="fig-ladder-') == 2 and "Ladders are drawn for the first 2 of" in page
    assert page.count('id="fig-journey-') == 1 and "Only the first 1 of 2 journeys are drawn" in page
    assert "Only the first 3 of" in page and "more rows not shown" in page
    assert info["journeys"] == 2 and info["journeys_drawn"] == 1


def test_empty_and_unreadable_input(tmp_path):
    path = tmp_path / "empty.pcap"
    write_pcap(path, [])
    a = maildissect.analyze(str(path))
    page, info = render_report(a, captures=[str(path)])
    assert "No TCP connections in the capture." in page and info["ladders"] == 0
    # captures that cannot be read again (stdin): ladders fall back to the flows table's times
    a, _ = analyze_frames(tmp_path, journey_frames())
    page, info = render_report(a, captures=["-"])
    assert info["packets_read"] is False and "estimated" in page


def test_report_command(tmp_path):
    _, path = analyze_frames(tmp_path, journey_frames())
    out = tmp_path / "r.html"
    code, _, err = cli_run(["report", path, "-o", str(out), "-j", "1", "--ladders", "3"])
    assert code == 0, err
    assert err.startswith("report written to") and "3 ladder diagrams" in err
    assert out.stat().st_size > 1_000_000  # plotly.js is inside
    code, _, err = cli_run(["report", path, "-o", str(tmp_path / "no" / "such" / "dir.html"), "-q", "-j", "1"])
    assert code == 1 and err.startswith("maildissect: error: cannot write") and len(err.splitlines()) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_renders_in_headless_chromium(journey_report, tmp_path):
    path, a, info = journey_report
    browser = Chromium(CHROMIUM)
    try:
        url = "file://" + os.path.abspath(path)
        browser.open(url)
        # plotly draws while the page loads; wait until every chart has its SVG
        assert browser.wait_for("Array.from(document.querySelectorAll('.plotly-graph-div'))"
                                ".every(d => d.querySelector('svg.main-svg'))")
        charts = browser.evaluate(
            "Array.from(document.querySelectorAll('.plotly-graph-div')).map("
            "d => [d.id, d.querySelectorAll('svg.main-svg').length])")
        assert len(charts) == 2 + info["journeys_drawn"] + info["ladders"]
        assert all(n >= 1 for _, n in charts), charts
        counts = browser.evaluate(
            "({bars: document.querySelectorAll('#fig-timeline .barlayer .point').length,"
            " markers: document.querySelectorAll('#fig-timeline .scatterlayer .point').length,"
            " arrows: document.querySelectorAll('#fig-ladder-0 .annotation-arrow-g').length,"
            " hops: document.querySelectorAll('#fig-journey-1 .scatterlayer .trace').length,"
            " rows: document.querySelectorAll('#table-sessions tbody tr').length})")
        sessions = len(a.records.sessions)
        ladder0 = len([c for c in a.records.commands if c.session_id == 0])
        assert counts["bars"] >= sessions - sum(1 for f in a.records.flows if f.close == "refused")
        assert counts["markers"] >= len(a.event_records) // 2
        assert counts["arrows"] >= ladder0 + 3  # every command and reply, plus the handshake
        assert counts["hops"] == sum(1 for h in a.journey_records.hops_of(1) if h.wire)
        assert counts["rows"] == sessions
        # sorting a table by a column works: the second click sorts descending
        for _ in range(2):
            browser.evaluate("document.querySelector('#table-sessions th:nth-child(1)').click()")
        first = browser.evaluate("document.querySelector('#table-sessions tbody tr td').textContent")
        assert first == str(max(s.session_id for s in a.records.sessions))
        # typing in a table's filter hides the other rows
        browser.evaluate("(() => { const i = document.querySelector('input[data-table=table-sessions]');"
                         " i.value = 'pop3'; i.dispatchEvent(new Event('input')); })()")
        visible = browser.evaluate("Array.from(document.querySelectorAll('#table-sessions tbody tr'))"
                                   ".filter(r => r.style.display !== 'none').length")
        assert visible == sum(1 for s in a.records.sessions if s.protocol == "pop3")
        shot = tmp_path / "report.png"
        browser.screenshot(str(shot), {"x": 0, "y": 0, "width": 1400, "height": 1800})
        # printing hides the navigation bar
        browser.call("Emulation.setEmulatedMedia", media="print")
        assert browser.evaluate("getComputedStyle(document.querySelector('nav')).display") == "none"
        events = browser.events
    finally:
        browser.close()
    problems = [e["params"] for e in events
                if e.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown")
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))]
    assert not problems, problems
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert requests == [url]  # the page itself, nothing else
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    print(f"screenshot: {shot}")
