"""The web page in headless Chromium: query, ranked studies, pictures and maps (skipped without
Playwright or a Chromium binary)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medtriad.index import IndexStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "page-token"


@pytest.fixture(scope="module")
def server(served_index: Path) -> Iterator[str]:
    import uvicorn

    from medtriad.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(served_index, token=TOKEN), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _painted(page, selector: str) -> int:
    """Number of non-transparent pixels drawn on the first canvas matching `selector`."""
    return page.evaluate(
        """(sel) => {
            const c = document.querySelector(sel);
            if (!c || !c.width || !c.height) return 0;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
        }""",
        selector,
    )


def test_page_searches_and_draws_results(server: str, served_index: Path, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium binary")
    store = IndexStore.open(served_index)
    row = int(np.flatnonzero(store.meta["has_cxr"].to_numpy())[0])
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/")
            page.wait_for_function(
                "document.querySelector('#index-info').textContent.includes('studies')"
            )
            assert "token required" in page.inner_text("#index-info")

            page.fill("#text", "pleural effusion")
            page.click("#go")
            page.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('error')"
            )
            assert "bearer token" in page.inner_text("#status")

            page.fill("#token", TOKEN)
            page.press("#token", "Tab")
            page.set_input_files("#input-cxr", str(store.path(row, "cxr")))
            assert page.inner_text("#file-cxr").endswith(".png")
            page.select_option("#k", "5")
            page.click("#go")
            page.wait_for_selector("#results .result", timeout=30_000)
            page.wait_for_function(
                "[...document.querySelectorAll('#results figure:not(.absent) img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000,
            )
            page.wait_for_timeout(200)
            assert page.locator("#results .result").count() == 5
            assert "cxr + report" in page.inner_text("#status")
            assert page.locator("#results .report .word").count() > 0
            assert _painted(page, "#results .result:not(:has(.cxr.absent)) .cxr canvas") > 0
            assert _painted(page, "#results .result:not(:has(.ecg.absent)) .ecg canvas") > 0
            page.select_option("#map-kind", "off")
            assert _painted(page, "#results .result .cxr canvas") == 0
            page.select_option("#map-kind", "map")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
