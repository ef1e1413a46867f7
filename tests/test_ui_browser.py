"""The Gradio demo in headless Chromium (Playwright): upload, ask, ground; answer, box overlay, expert chart."""
from __future__ import annotations

import io
import os
import shutil
import socket

import httpx
import numpy as np
import pytest
from PIL import Image

from _infer_helpers import save_tiny_model, script_answers, write_geotiff

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from skymoe.infer import Pipeline
    from skymoe.serve.ui import build_web_ui

    pipeline = Pipeline.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("model")), max_new_tokens=6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web_ui = build_web_ui(pipeline)
    web_ui.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield pipeline, f"http://127.0.0.1:{port}/"
    web_ui.close()


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page()
        page.goto(app[1])
        yield page
        browser.close()


def upload(page, path) -> None:
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():  # a file is already there: the drop zone comes back once it is cleared
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#upload").get_by_text(path.stem).first.wait_for(timeout=30000)


def run_and_wait_for_answer(page, previous: str = "") -> str:
    page.locator("#run").click()
    page.wait_for_function(
        "prev => { const t = document.querySelector('#answer textarea'); return t && t.value.length > 0 && t.value !== prev; }",
        arg=previous, timeout=30000,
    )
    return page.locator("#answer textarea").input_value()


def test_ask_then_ground_shows_answer_overlay_and_expert_weights(app, page, tmp_path):
    pipeline, _ = app
    pixels = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    (tmp_path / "broken.png").write_text("this is not an image")

    # A file that is not an image: a clear message, and the app keeps working.
    upload(page, tmp_path / "broken.png")
    page.locator("#prompt textarea").fill("Is there a ship?")
    page.locator("#run").click()
    page.get_by_text("Cannot use this file").first.wait_for(timeout=30000)

    upload(page, tmp_path / "scene.png")
    answer = run_and_wait_for_answer(page)
    assert answer == pipeline.ask(Image.fromarray(pixels), "Is there a ship?").text
    page.locator("#experts svg .mark-rect path").first.wait_for(timeout=30000)
    assert page.locator("#experts svg .mark-rect path").count() == 8  # 2 MoE layers x 4 experts
    assert page.locator("#routing textarea").input_value().startswith("router: task ")

    script_answers(pipeline, "[25, 50, 75, 100]")  # the random model writes no box; script one to check the overlay
    page.get_by_label("Find (grounding)").check()
    page.locator("#prompt textarea").fill("the tank")
    assert run_and_wait_for_answer(page, answer) == "[25, 50, 75, 100]"
    page.locator("#overlay img.mask").wait_for(timeout=30000)
    assert page.locator("#overlay .legend-item").inner_text() == "the tank"
    mask = Image.open(io.BytesIO(httpx.get(page.locator("#overlay img.mask").get_attribute("src")).content)).convert("RGBA")
    alpha = np.asarray(mask)[:, :, 3] > 0
    ys, xs = np.nonzero(alpha)
    assert mask.size == (80, 60) and (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (20, 30, 60, 60)


def test_geotiff_upload_with_13_bands(app, page, tmp_path):
    write_geotiff(tmp_path / "s2.tif", 40, 40, bands=13, dtype="uint16")
    upload(page, tmp_path / "s2.tif")
    page.get_by_label("Caption").check()
    previous = page.locator("#answer textarea").input_value()
    script_answers(app[0], "a river and fields")
    assert run_and_wait_for_answer(page, previous) == "a river and fields"  # the 13-band GeoTIFF was read and answered
    page.locator("#overlay img.base-image").wait_for(timeout=30000)
    assert page.locator("#overlay img.mask").count() == 0  # a caption has no boxes
