"""The built book in headless Chromium, offline: every page, every explorer.

Serves the site on 127.0.0.1 (a free port), opens every page with every non-local request
aborted, and checks: no page error, no console error, no failed local request, no request that
tried to leave the machine, math typeset (no raw ``\\(``, ``\\[`` or ``$$`` left in the text), and
for every frame-stack explorer (``.energylib-explorer``): it renders, its first slider --- and
then each further slider, which drives a nested level of stacks --- changes the image when moved
by keyboard, and Play (where present) advances the frames.

Run after ``make book``:  ``pytest tests/browser --site _build/html`` (see conftest.py).
Chromium is Debian's (``apt-get install -y chromium``; override with ``$CHROMIUM``); never
``playwright install``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError as err:  # a failure, not a skip: the CI target needs it
    raise ImportError("the browser tests need playwright (pip install -r requirements.txt)") from err

EXPLORER = ".energylib-explorer"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).is_file():
        pytest.fail(f"no Chromium at {exe}: apt-get install -y chromium (or set $CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


class PageLog:
    """What a page did: errors, console errors, failed local requests, attempts to go out."""

    def __init__(self, page: Page, base: str) -> None:
        self.errors: list[str] = []
        self.console: list[str] = []
        self.failed: list[str] = []
        self.external: list[str] = []
        local = (base, "data:", "blob:", "about:")

        def route(r):  # noqa: ANN001
            url = r.request.url
            if url.startswith(local):
                r.continue_()
            else:
                self.external.append(url)
                r.abort()

        page.route("**/*", route)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        page.on("requestfailed", lambda r: None if not r.url.startswith(base)
                else self.failed.append(f"{r.failure} {r.url}"))


RAW_MATH_JS = r"""() => {
  const skip = new Set(["PRE", "CODE", "SCRIPT", "STYLE", "TEXTAREA", "MJX-CONTAINER"]);
  const found = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    let el = n.parentElement, code = false;
    for (; el; el = el.parentElement) {
      if (skip.has(el.tagName) || el.classList.contains("highlight")) { code = true; break; }
    }
    if (!code && /\\\(|\\\[|\$\$/.test(n.textContent)) found.push(n.textContent.trim().slice(0, 100));
  }
  return found;
}"""

MATHJAX_DONE_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  return document.querySelectorAll("mjx-container").length;
}"""


def expected_explorers(page: Page) -> int:
    """How many frame-stack explorers the page displays, read from its embedded widget state."""
    state_text = page.evaluate("""() => Array.from(document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-state+json"]')).map(s => s.textContent)""")
    views = page.evaluate("""() => Array.from(document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]')).map(s => s.textContent)""")
    state: dict = {}
    for text in state_text:
        state.update(json.loads(text).get("state", {}))
    shown = [json.loads(v)["model_id"] for v in views]
    return sum(EXPLORER[1:] in state.get(m, {}).get("state", {}).get("_dom_classes", [])
               for m in shown)


def _changes(shot, before: bytes, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if shot() != before:
            return True
        time.sleep(0.2)
    return False


def check_explorer(explorer, name: str) -> list[str]:  # noqa: ANN001
    problems: list[str] = []
    image = explorer.locator(".widget-image")
    if image.count() != 1:
        return [f"{name}: {image.count()} visible images, expected 1"]

    def shot() -> bytes:
        return image.screenshot(animations="disabled")

    handles = explorer.locator(".noUi-handle")
    for k in range(handles.count()):  # the first slider, then each nested level in turn
        handle = handles.nth(k)
        now, top = (int(float(handle.get_attribute(a) or 0)) for a in ("aria-valuenow", "aria-valuemax"))
        before = shot()
        handle.focus()
        handle.press("ArrowLeft" if now >= top else "ArrowRight")
        if not _changes(shot, before):
            problems.append(f"{name}: moving slider {k + 1} by keyboard did not change the image")
    play = explorer.locator(".widget-play button").first
    if explorer.locator(".widget-play").count():
        before = shot()
        play.click()
        if not _changes(shot, before, timeout_s=6.0):
            problems.append(f"{name}: Play did not advance the frames")
    return problems


def test_page(page_path: str, site: Path, base_url: str, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log = PageLog(page, base_url)
    url = f"{base_url}/{page_path}"
    redirect = 'http-equiv="refresh"' in (site / page_path).read_text(encoding="utf-8").lower()
    try:
        page.goto(url, wait_until="load")
        if redirect:  # e.g. index.html -> the root page: check where it lands
            page.wait_for_url(lambda u: u != url)
            page.wait_for_load_state("load")
        typeset = page.evaluate(MATHJAX_DONE_JS)
        raw = page.evaluate(RAW_MATH_JS)
        has_math = page.locator(".math").count() > 0
        n = expected_explorers(page)
        problems: list[str] = []
        if n:
            page.wait_for_function(
                f"() => document.querySelectorAll('{EXPLORER} .widget-image').length >= {n}",
                timeout=TIMEOUT_MS)
            explorers = page.locator(EXPLORER)
            for i in range(explorers.count()):
                problems += check_explorer(explorers.nth(i), f"explorer {i + 1} of {n}")
        page.wait_for_timeout(300)  # let late errors of the interactions arrive
    finally:
        context.close()
    assert not log.errors, f"page errors: {log.errors}"
    assert not log.external, f"requests that tried to leave the machine: {log.external}"
    assert not log.failed, f"failed local requests: {log.failed}"
    assert not log.console, f"console errors: {log.console}"
    assert not raw, f"untypeset math in the text: {raw}"
    assert typeset or not has_math, "the page has math but MathJax typeset none of it"
    assert not problems, "\n".join(problems)


def test_the_site_has_explorers(site: Path) -> None:
    """Guard against a silent pass: some page of the book embeds a frame-stack explorer."""
    assert any(EXPLORER[1:] in p.read_text(encoding="utf-8", errors="replace")
               for p in site.rglob("*.html")), "no page of the site embeds an explorer"
