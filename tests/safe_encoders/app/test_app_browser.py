"""`safe-encoders app` in a real browser: Playwright drives Debian's headless Chromium against the app served on a
free loopback port (once for the module), and what the page shows is checked against the library's own answers
for the same inputs. Screenshots of each tab go to $SAFE_ENCODERS_SCREENSHOTS (default test-artifacts/app/).

Outside CI a machine without Chromium (or without the [app] extra) skips these tests, naming the install command;
in CI (CI=true) they fail instead (.ci/run installs Chromium).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.safe_encoders.app.tiny_demo import trusted_demo_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL = {"chromium": "apt-get update && apt-get install -y chromium", "python": "pip install 'safe-encoders[app]'"}
SCREENSHOTS = Path(os.environ.get("SAFE_ENCODERS_SCREENSHOTS", "test-artifacts/app"))
PROMPT = "a red circle on the left, grass background"
SEED = 7
TIMEOUT = 60_000  # ms: a busy shared CPU


def chromium() -> str | None:
    path = os.environ.get("SAFE_ENCODERS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


def require_browser() -> str:
    """Chromium's path; a skip naming the install command when it (or the extra) is missing, a failure in CI."""
    missing = []
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    path = chromium()
    if path is None:
        missing.append("chromium")
    if missing:
        commands = [INSTALL["python"]] if {"gradio", "playwright"} & set(missing) else []
        commands += [INSTALL["chromium"]] if "chromium" in missing else []
        message = f"browser tests need {', '.join(missing)}: {'; '.join(commands)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_trust_dir):
    """The app over a tiny demo folder, served in this process on a free loopback port."""
    require_browser()
    from safe_encoders.app import AppConfig
    from safe_encoders.app.server import serve

    root = trusted_demo_folder(tmp_path_factory.mktemp("demo"), module_trust_dir)
    config = AppConfig.for_demo(root, port=free_port())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAFE_ENCODERS_TRUST_DIR", str(module_trust_dir))
        app, models = serve(config, block=False)
    yield models, f"http://127.0.0.1:{config.port}/"
    app.close()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    path = require_browser()
    _, url = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT)
        page.goto(url)
        page.locator("#app-footer").wait_for()
        yield page
        browser.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def wait_status(page, element: str, text: str) -> str:
    """The status line of a tab once it holds `text` (what the page says when the request is done)."""
    locator = page.locator(f"#{element}")
    locator.filter(has_text=text).wait_for()
    return locator.inner_text()


def table_rows(page, element: str) -> list[list[str]]:
    """The cells of a table as the page shows them (Gradio's data frame marks each `cell-<row>-<column>`)."""
    cells = page.eval_on_selector_all(
        f"#{element} [data-testid^='cell-']", "cells => cells.map(c => [c.dataset.testid, c.innerText])"
    )
    grid: dict[int, dict[int, str]] = {}
    for name, text in cells:
        _, row, column = name.split("-")
        grid.setdefault(int(row), {})[int(column)] = text.strip()
    return [[grid[row][column] for column in sorted(grid[row])] for row in sorted(grid)]


def shown_image(page, selector: str) -> np.ndarray:
    """The pixels of an image the page shows, fetched as the browser fetched them."""
    from PIL import Image

    source = page.locator(selector).get_attribute("src")
    body = page.request.get(source).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def library_image(pipe, prompt: str, seed: int, steps: int) -> np.ndarray:
    with torch.no_grad():
        image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image.convert("RGB"))


def test_generate_shows_what_the_pipelines_draw_and_what_the_gate_did(page, served):
    models, _ = served
    open_tab(page, "Generate")
    page.locator("#generate-prompt textarea").fill(PROMPT)
    page.locator("#generate-seed input").fill(str(SEED))
    page.locator("#generate-run").click()
    wait_status(page, "generate-status", f"seed {SEED}")
    steps = models.config.steps
    as_loaded = shown_image(page, "#generate-image-0 img")
    with_make_safe = shown_image(page, "#generate-image-1 img")
    assert np.array_equal(as_loaded, library_image(models.pipe, PROMPT, SEED, steps))
    assert np.array_equal(with_make_safe, library_image(models.safe_pipe, PROMPT, SEED, steps))
    assert not np.array_equal(as_loaded, with_make_safe)  # make_safe changed the conditioning
    scores = models.hysac.unsafe_score(texts=[PROMPT]).text
    gate_report = page.locator("#generate-report-2 textarea").input_value()
    unsafe = bool(scores.unsafe[0])
    assert f"prompt score {float(scores.scores[0]):.4f} (threshold {scores.threshold:.4f})" in gate_report
    assert f"prompt: checked, {'redirected' if unsafe else 'passed'}" in gate_report
    assert "is_safe: False" in page.locator("#generate-report-0 textarea").input_value()
    assert "is_safe: True" in page.locator("#generate-report-1 textarea").input_value()
    page.screenshot(path=SCREENSHOTS / "generate.png", full_page=True)


def test_a_huge_prompt_gets_a_message_and_the_server_carries_on(page):
    open_tab(page, "Generate")
    page.locator("#generate-prompt textarea").fill("a" * 10_000)
    page.locator("#generate-run").click()
    status = wait_status(page, "generate-status", "Error")
    assert "10,000 characters" in status and "limit" in status
    page.locator("#generate-prompt textarea").fill(PROMPT)
    page.locator("#generate-seed input").fill(str(SEED + 1))
    page.locator("#generate-run").click()
    wait_status(page, "generate-status", f"seed {SEED + 1}")


def test_the_gate_policy_is_chosen_in_the_page(page, served):
    models, _ = served
    open_tab(page, "Generate")
    page.locator("#generate-prompt textarea").fill(PROMPT)
    page.locator("#generate-prompt-policy input").click()
    page.get_by_role("option", name="block", exact=True).click()
    page.locator("#generate-seed input").fill(str(SEED + 2))
    page.locator("#generate-run").click()
    wait_status(page, "generate-status", f"seed {SEED + 2}")
    report = page.locator("#generate-report-2 textarea").input_value()
    unsafe = bool(models.hysac.unsafe_score(texts=[PROMPT]).text.unsafe[0])
    assert ("refused: safety gate: unsafe prompt" in report) == unsafe
    assert "with the HySAC gate (prompt: block, images: blur)" in report
    assert f"prompt: {'blocked' if unsafe else 'passed'}" in report
    assert page.locator("#generate-image-2 img").count() == (0 if unsafe else 1)


def test_moderate_shows_hysac_scores_and_an_unreadable_upload(page, served, tmp_path):
    models, _ = served
    open_tab(page, "Moderate")
    texts = ["a blue square on the right", PROMPT]
    images = sorted((Path(models.config.scan_images) / "unsafe").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.locator("#moderate-text textarea").fill("\n".join(texts))
    page.locator("#moderate-files input[type=file]").set_input_files([*map(str, images), str(broken)])
    page.locator("#moderate-files").filter(has_text="broken").wait_for()
    page.locator("#moderate-run").click()
    status = wait_status(page, "moderate-status", "items")
    assert "1 not scored" in status
    rows = table_rows(page, "moderate-table")
    text_scores = models.hysac.unsafe_score(texts=texts).text
    from PIL import Image

    image_scores = models.hysac.unsafe_score(images=[Image.open(p).convert("RGB") for p in images]).image
    expected = [
        [t, "text", f"{s:.4f}", f"{text_scores.threshold:.4f}", "UNSAFE" if u else "safe"]
        for t, s, u in zip(texts, text_scores.scores.tolist(), text_scores.unsafe.tolist(), strict=True)
    ] + [
        [p.name, "image", f"{s:.4f}", f"{image_scores.threshold:.4f}", "UNSAFE" if u else "safe"]
        for p, s, u in zip(images, image_scores.scores.tolist(), image_scores.unsafe.tolist(), strict=True)
    ]
    assert [row[1:] for row in rows[:4]] == expected
    assert rows[4][1:3] == ["broken.png", "image"] and rows[4][3] == ""
    assert "unreadable" in rows[4][5] and rows[4][5].endswith("not safe")
    page.locator("#moderate-plot").locator("img, svg, canvas").first.wait_for()
    page.screenshot(path=SCREENSHOTS / "moderate.png", full_page=True)


def test_search_returns_what_the_library_returns(page, served):
    from safe_encoders.moderation import search

    models, _ = served
    index = models.index(models.scan_folder)
    open_tab(page, "Search")
    query = "a red circle, lewd"
    page.locator("#search-text textarea").fill(query)
    page.locator("#search-safety").get_by_text("redirect", exact=True).click()
    page.locator("#search-run").click()
    wait_status(page, "search-status", "safety: redirect")
    hits = search(models.hysac, index, texts=[query], k=8, safety="redirect")[0]
    expected = [[str(n), h.id, h.modality, f"{h.distance:.4f}", "UNSAFE" if h.unsafe else "safe"]
                for n, h in enumerate(hits, 1)]  # fmt: skip
    assert table_rows(page, "search-table") == expected
    assert page.locator("#search-gallery img").count() >= len(hits)
    page.screenshot(path=SCREENSHOTS / "search.png", full_page=True)

    picture = sorted((Path(models.config.scan_images) / "safe").glob("*.png"))[0]
    page.locator("#search-text textarea").fill("")
    page.locator("#search-image input[type=file]").set_input_files(str(picture))
    page.locator("#search-safety").get_by_text("filter", exact=True).click()
    page.locator("#search-run").click()
    wait_status(page, "search-status", "safety: filter")
    hits = search(models.hysac, index, images=[str(picture)], k=8, safety="filter")[0]
    assert [row[1] for row in table_rows(page, "search-table")] == [h.id for h in hits]
    assert all(not h.unsafe for h in hits)


def test_a_folder_that_is_not_a_scan_gets_a_message(page, served, tmp_path):
    models, _ = served
    open_tab(page, "Search")
    page.locator("#search-folder textarea, #search-folder input").first.fill(str(tmp_path))
    page.locator("#search-text textarea").fill("a red circle")
    clear = page.locator("#search-image button[aria-label=Clear]")
    if clear.count():  # an image query of the test before
        clear.click()
    page.locator("#search-run").click()
    assert "is not a scan" in wait_status(page, "search-status", "Error")
    page.locator("#search-folder textarea, #search-folder input").first.fill(models.scan_folder)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.locator("#search-text textarea").fill("")
    page.locator("#search-image input[type=file]").set_input_files(str(broken))
    page.locator("#search-run").click()
    assert "The query image cannot be read" in wait_status(page, "search-status", "cannot be read")


def test_the_footer_says_what_is_loaded_and_that_the_swap_verifies(page, served):
    from safe_encoders import is_safe

    models, _ = served
    footer = page.locator("#app-footer").inner_text()
    assert models.config.checkpoint in footer and models.config.hysac in footer and models.scan_folder in footer
    assert f"make_safe is_safe(verify=True): {is_safe(models.safe_pipe, verify=True)}" in footer
    assert "verified" in footer and "NOT verified" not in footer
