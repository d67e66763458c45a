"""A real browser for the report tests: headless Chromium driven over the DevTools protocol.

Debian's `chromium` package (CI installs it in .ci/run) is started with `--remote-debugging-pipe`:
the protocol's JSON messages go over file descriptors 3 and 4, so no websocket library and no
port are needed, and no browser is downloaded. Tests ask for it with the `browser` fixture and
carry the `browser` marker; without Chromium the test skips, or fails when
`ILEX_REQUIRE_BROWSER=1` (as CI sets it, so that CI cannot pass by skipping).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    given = os.environ.get("ILEX_CHROMIUM")
    if given:
        return given
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    import pytest

    path = find_chromium()
    if path is None:
        reason = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("ILEX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; ILEX_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(reason)
    return path


class Page:
    """One tab; records what a person would call an error: console errors, uncaught exceptions,
    log errors (a resource that failed to load), failed requests, and every URL requested."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session
        self.errors: list[str] = []
        self.requests: list[str] = []

    def send(self, method: str, **params):
        return self.browser.send(method, params, session=self.session)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            self.errors.append(
                f"console {params['type']}: "
                + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            self.errors.append(f"log {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            self.errors.append(f"request failed: {params.get('errorText')} {params.get('blockedReason', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    def open(self, url: str, timeout: float = 60.0) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1100, height=900, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)
        self.browser.wait_for(
            lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == self.session, timeout
        )
        self.settle(0.3)

    def settle(self, seconds: float) -> None:
        """Let the page run (transitions, late errors) while its events are still read."""
        self.browser.wait_for(lambda m: False, seconds, raise_on_timeout=False)

    def evaluate(self, expression: str):
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} raised {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def rect(self, selector: str) -> dict:
        """The element's box in CSS pixels of the viewport, after scrolling it into view."""
        return self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'start'}});
            const r = e.getBoundingClientRect(); return {{x: r.x, y: r.y, width: r.width, height: r.height}}; }})()""")

    def screenshot(self, rect: dict | None = None) -> np.ndarray:
        """(rows, columns, 3) uint8 screenshot of the viewport, or of `rect` (viewport pixels)."""
        from PIL import Image as PILImage

        params = {"format": "png"}
        if rect is not None:  # the clip is in page coordinates: the viewport's plus the scroll offset
            scroll = self.evaluate("[window.scrollX, window.scrollY]")
            params["clip"] = {
                "x": round(rect["x"] + scroll[0]),
                "y": round(rect["y"] + scroll[1]),
                "width": round(rect["width"]),
                "height": round(rect["height"]),
                "scale": 1,
            }
        data = self.send("Page.captureScreenshot", **params)["data"]
        return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def mouse(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)


class Browser:
    """Headless Chromium over the DevTools pipe; `page()` opens a tab."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="ilex-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The protocol's fds in the child: 3 reads our commands, 4 writes replies. A shell moves
        # them there (no preexec_fn, which is unsafe with JAX's threads running); the copies sit
        # above 10 first so that moving one never overwrites the other.
        child_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        to_child_r, from_child_w = child_r, child_w
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            # Nothing outside the page may be reached: any host name fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                'exec 3<&"$1" 4>&"$2"; shift 2; exec "$@"',
                "bash",
                str(to_child_r),
                str(from_child_w),
                executable,
                *flags,
            ],
            pass_fds=(to_child_r, from_child_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self._pages: dict[str, Page] = {}
        self._queue: list[dict] = []

    def _read(self, timeout: float) -> dict | None:
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_child], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (it exited)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        page = self._pages.get(message.get("sessionId"))
        if page is not None and "method" in message:
            page._event(message)
        return message

    def wait_for(self, predicate, timeout: float, raise_on_timeout: bool = True) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if raise_on_timeout:
                    raise TimeoutError("Chromium did not answer in time")
                return None
            message = self._read(left)
            if message is not None and predicate(message):
                return message

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m: m.get("id") == message["id"], timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        return page

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the process is ended below either way
            self.send("Browser.close", timeout=10)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)
