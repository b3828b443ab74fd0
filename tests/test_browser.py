"""The demo in a real browser: Playwright drives headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tp_rag import TPEncoder
from tp_rag.cli.demo import load_demo_module
from tp_rag.store import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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
TEXT = "Glaciers grind bedrock and turn narrow river valleys into wide U-shaped ones."

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def url(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app_module = load_demo_module()
    encoder = TPEncoder.from_pretrained(tiny_llama, device="cpu")
    demo = app_module.Demo(encoder, connect(tmp_path_factory.mktemp("browser") / "db"))
    app = app_module.build_app(demo)
    _, local_url, _ = app_module.launch(app, port=None, block=False)
    try:
        yield local_url
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_query_and_see_both_columns(url: str, browser: Any, tmp_path: Path) -> None:
    """In Chromium: upload a file on the Ingest tab, see the counts, search for its text on
    the Compare tab, and find it at the top of both the TP-on and the TP-off column; a
    screenshot of the page is saved in the test's temporary folder."""
    from playwright.sync_api import expect

    document = tmp_path / "glaciers.txt"
    document.write_text(TEXT, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)

    expect(page.locator("#ingest-status")).to_contain_text("holds 0 chunks", timeout=30_000)
    page.locator("#upload input[type=file]").set_input_files(str(document))
    # Gradio renders the name as "glaciers" + ".txt" in two elements once the upload is done.
    expect(page.locator("#upload")).to_contain_text(re.compile(r"glaciers\s*\.txt"), timeout=30_000)
    page.locator("#ingest").click()
    status = page.locator("#ingest-status")
    expect(status).to_contain_text("1 file (1 new or changed", timeout=60_000)
    expect(status).to_contain_text("chunks embedded with TP on")

    page.get_by_role("tab", name="Compare").click()
    page.locator("#query textarea").fill(TEXT)
    page.locator("#search").click()
    for column in ("#tp-on", "#tp-off"):
        expect(page.locator(column)).to_contain_text("glaciers.txt #0", timeout=60_000)
        expect(page.locator(column)).to_contain_text("Glaciers grind bedrock")
    expect(page.locator("#compare-status")).to_contain_text("found by both")

    screenshot = tmp_path / "demo-compare.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert errors == []
    page.close()
