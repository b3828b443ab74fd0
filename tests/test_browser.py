"""The demo in a real browser: Playwright drives headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tp_rag import TPEncoder
from tp_rag.demo import app as demo_app
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

SCREENSHOTS = os.environ.get("TP_RAG_SCREENSHOTS")
"""A folder to keep the screenshots in (default: the test's temporary folder)."""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def url(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app_module = demo_app
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
    expect(status).to_contain_text("holds 1 chunk embedded with TP on")  # one short file

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


def _shoot(page: Any, tmp_path: Path, name: str) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


FIRST_CELLS = '[data-testid^="cell-"][data-testid$="-0"]'
"""The first cell of each body row of a gr.Dataframe (it renders rows as role="row" divs)."""

LINES_OF_TEXT = """(element) => {
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    let node, lines = 0;
    while ((node = walker.nextNode())) {
        if (!node.textContent.trim()) continue;
        const range = document.createRange();
        range.selectNodeContents(node);
        const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
        lines += tops.size;
    }
    return lines;
}"""


@pytest.mark.parametrize("width", [1400, 800])
def test_a_first_visit_explains_itself_and_survives_bad_input(
    url: str, browser: Any, tmp_path: Path, width: int
) -> None:
    """In Chromium at 1400 and 800 px: the page says what TP is and what to do first; after the
    sample corpus is in, five results per side show in full with one-line headers; an empty
    query or Evaluate without an upload says what is wrong and keeps the earlier results (no
    "Error" badges); the metrics are explained and the chart lists TP on before TP off."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)

    intro = page.locator("#intro")
    expect(intro).to_contain_text("Token Prepending (TP)", timeout=30_000)
    expect(intro).to_contain_text("1. Ingest")
    expect(intro).to_contain_text("3. Evaluate")
    status = page.locator("#ingest-status")
    expect(status).to_contain_text(re.compile(r"chunks? embedded with TP on"))
    if "holds 0 chunks" in status.inner_text():
        expect(status).to_contain_text("Load the sample corpus")
    _shoot(page, tmp_path, f"{width}-1-ingest")

    page.locator("#load-sample").click()
    expect(status).to_contain_text("Ingested", timeout=120_000)
    expect(status).to_contain_text("Next: search your documents on the Compare tab")

    page.get_by_role("tab", name="Compare").click()
    page.locator("#query textarea").fill("How do glaciers shape valleys?")
    page.locator("#search").click()
    expect(page.locator("#compare-status")).to_contain_text("found by both", timeout=60_000)
    expect(page.locator("#compare-help")).to_contain_text("cosine similarity")
    for column in ("#tp-on", "#tp-off"):
        table = page.locator(column)
        expect(table.locator(FIRST_CELLS)).to_have_count(5)
        expect(table).to_contain_text("sample/")
        last_row, box = table.locator(FIRST_CELLS).last.bounding_box(), table.bounding_box()
        assert last_row is not None and box is not None
        assert last_row["y"] + last_row["height"] <= box["y"] + box["height"] + 1, "rows cut off"
        for header in ("similarity", "source", "snippet"):
            cell = table.locator(f'[role="columnheader"][title="{header}"]')
            assert cell.evaluate(LINES_OF_TEXT) == 1, f"header {header!r} wraps at {width} px"
    _shoot(page, tmp_path, f"{width}-2-compare")

    page.locator("#query textarea").fill("   ")
    page.locator("#search").click()
    expect(page.locator("#compare-status")).to_contain_text(
        "Not done: the query is empty", timeout=30_000
    )
    expect(page.locator("#tp-on").locator(FIRST_CELLS)).to_have_count(5)  # earlier results stay
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    _shoot(page, tmp_path, f"{width}-3-compare-empty-query")

    page.get_by_role("tab", name="Evaluate").click()
    expect(page.locator("#metrics-help")).to_contain_text("Recall@10 is the share")
    headers = page.locator('#scores [role="columnheader"]')  # before a run: the real ones
    expect(headers.first).to_contain_text("metric")
    expect(page.locator("#scores")).to_contain_text("TP on − TP off")
    _shoot(page, tmp_path, f"{width}-4a-evaluate-before")
    page.locator("#evaluate").click()
    evaluate_status = page.locator("#evaluate-status")
    expect(evaluate_status).to_contain_text("13 queries over 32 documents", timeout=120_000)
    expect(page.locator("#scores")).to_contain_text("nDCG@10")
    chart = page.locator("#chart")
    expect(chart).to_contain_text("TP on vs TP off")
    expect(chart.locator("canvas, svg").first).to_be_visible(timeout=30_000)  # drawn
    _shoot(page, tmp_path, f"{width}-4-evaluate")

    page.get_by_text("Uploaded BEIR folder or zip").click()
    page.locator("#evaluate").click()
    expect(evaluate_status).to_contain_text("Not done: upload a BEIR folder", timeout=30_000)
    expect(page.locator("#scores")).to_contain_text("MRR@10")  # the earlier scores stay
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    _shoot(page, tmp_path, f"{width}-5-evaluate-no-upload")
    assert errors == []
    page.close()


@pytest.mark.parametrize("width", [1400, 800])
def test_a_second_ingest_and_fresh_results_without_a_stale_warning(
    url: str, browser: Any, tmp_path: Path, width: int
) -> None:
    """In Chromium at 1400 and 800 px: after an ingest the upload list is empty (its files are
    deleted), so pressing Ingest again asks for files instead of failing on a deleted upload,
    and a new upload is ingested alone; a warning from a bad search does not stay over the
    fresh results of the next one."""
    from playwright.sync_api import expect

    first, second = tmp_path / f"tides-{width}.txt", tmp_path / f"winds-{width}.md"
    first.write_text("Tides rise and fall twice a day with the Moon.", encoding="utf-8")
    second.write_text("Trade winds blow steadily toward the equator.", encoding="utf-8")
    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    status = page.locator("#ingest-status")
    expect(status).to_contain_text("embedded with TP on", timeout=30_000)

    upload = page.locator("#upload")
    page.locator("#upload input[type=file]").set_input_files(str(first))
    expect(upload).to_contain_text(f"tides-{width}", timeout=30_000)
    page.locator("#ingest").click()
    expect(status).to_contain_text("1 file (1 new or changed", timeout=60_000)
    expect(upload).not_to_contain_text(f"tides-{width}", timeout=30_000)  # the list is cleared
    _shoot(page, tmp_path, f"{width}-6-after-ingest")

    page.locator("#ingest").click()  # again, with nothing uploaded
    expect(status).to_contain_text("Not done: no files to ingest", timeout=30_000)
    expect(status).not_to_contain_text("Errno")
    page.locator("#upload input[type=file]").set_input_files(str(second))
    expect(upload).to_contain_text(f"winds-{width}", timeout=30_000)
    expect(upload).not_to_contain_text(f"tides-{width}")
    page.locator("#ingest").click()
    expect(status).to_contain_text("1 file (1 new or changed", timeout=60_000)
    expect(status).not_to_contain_text("Not done")
    _shoot(page, tmp_path, f"{width}-7-second-ingest")

    page.get_by_role("tab", name="Compare").click()
    page.locator("#query textarea").fill("   ")
    page.locator("#search").click()
    expect(page.locator("#compare-status")).to_contain_text("Not done", timeout=30_000)
    toasts = page.locator(".toast-body")
    expect(toasts).to_have_count(1, timeout=10_000)  # the warning shows
    _shoot(page, tmp_path, f"{width}-8-warning")
    page.locator("#query textarea").fill(first.read_text(encoding="utf-8"))  # tops both sides
    page.locator("#search").click()
    expect(toasts).to_have_count(0, timeout=2_000)  # closed at the click, not 10 s later
    expect(page.locator("#compare-status")).to_contain_text("found by both", timeout=60_000)
    expect(page.locator("#tp-on")).to_contain_text(f"tides-{width}.txt")
    expect(toasts).to_have_count(0)  # no stale warning over the fresh results
    _shoot(page, tmp_path, f"{width}-9-fresh-results")
    assert errors == []
    page.close()
