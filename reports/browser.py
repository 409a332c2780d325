"""Open report pages in headless Chromium and say what rendered, with the standard library only.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON
messages ending in a NUL byte on file descriptors 3 and 4), so no websocket client or browser
package is needed. For every page: each chart container (``.chart``) is checked for an
``svg`` or ``canvas`` once the page has finished embedding its charts, and every console
error, uncaught exception and browser log error (a blocked request, a CSP violation, a
script that failed to load) is collected.

    from reports.browser import find_chromium, check_pages
    for page in check_pages(["report/index.html"]):
        assert page.ok, page.problems()
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Flags for a quiet, offline, throwaway browser (running as root needs --no-sandbox).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--remote-debugging-pipe")

# Evaluated in the page: which chart containers hold a rendered view, and the page's verdict.
PROBE = """(() => {
  const charts = Array.from(document.querySelectorAll('.chart')).map(el => ({
    id: el.id, rendered: !!el.querySelector('svg, canvas'),
    error: (el.querySelector('.chart-error') || {}).textContent || null}));
  return JSON.stringify({done: document.body ? document.body.dataset.charts || null : null, charts});
})()"""


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable: $CHROMIUM, then the usual names on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    """What one page showed in the browser."""

    path: str
    charts: list = field(default_factory=list)  # [{"id", "rendered", "error"}]
    errors: list = field(default_factory=list)  # console errors, exceptions, log errors
    warnings: list = field(default_factory=list)  # console warnings (Vega's, e.g. an empty extent)
    finished: bool = False  # the page's embedding script reported that it was done

    @property
    def ok(self) -> bool:
        return self.finished and not self.errors and all(c["rendered"] for c in self.charts)

    def problems(self) -> str:
        lines = [] if self.finished else ["the page never reported that its charts were embedded"]
        lines += [f"chart {c['id']} did not render" + (f": {c['error']}" if c["error"] else "")
                  for c in self.charts if not c["rendered"]]
        lines += [f"console: {e}" for e in self.errors]
        return f"{self.path}: " + ("; ".join(lines) or "ok")


class _Pipe:
    """A DevTools protocol connection over Chromium's debugging pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.write_fd, self.read_fd = proc, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply is None:
                raise TimeoutError(f"chromium did not answer {method} within {timeout:.0f} s")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while (event := self._read(deadline)) is not None:
            if "method" in event:
                self.events.append(event)

    def _read(self, deadline: float) -> dict | None:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                return None
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def _messages(events: list[dict], session: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) the page logged."""
    out, warned = [], []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            (warned if params["type"] == "warning" else out).append(text)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append((details.get("exception") or {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return out, warned


def check_pages(paths, chromium: str | None = None, timeout: float = 60) -> list[PageCheck]:
    """Load every page (HTML file paths) in one headless Chromium; a ``PageCheck`` for each.

    A page is done when its script sets ``document.body.dataset.charts`` (every chart embedded
    or failed), or after ``timeout`` seconds. Raises FileNotFoundError without Chromium.
    """
    chromium = chromium or find_chromium()
    if not chromium:
        raise FileNotFoundError("no chromium executable found (install Debian's chromium package)")
    with tempfile.TemporaryDirectory(prefix="phasefit-chromium-") as profile:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        ends = (to_browser_r, from_browser_w)

        def wire():  # in the child: the browser reads commands on fd 3 and writes on fd 4
            high = [os.dup(fd) for fd in ends]  # out of the way of 3 and 4 first
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                preexec_fn=wire, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(proc, to_browser_w, from_browser_r)
        try:
            return [_check(pipe, Path(p), timeout) for p in paths]
        finally:
            try:
                pipe.send("Browser.close", timeout=5)
            except (RuntimeError, TimeoutError, OSError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _check(pipe: _Pipe, path: Path, timeout: float) -> PageCheck:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
    check = PageCheck(str(path))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = pipe.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
        state = json.loads(result.get("result", {}).get("value") or "{}")
        if state.get("done"):
            check.finished, check.charts = True, state["charts"]
            break
        check.charts = state.get("charts", [])
        pipe.pump(0.1)
    pipe.pump(0.2)  # errors logged just after the last chart
    check.errors, check.warnings = _messages(pipe.events, session)
    pipe.send("Target.closeTarget", {"targetId": target})
    return check
