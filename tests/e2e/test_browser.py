"""The playground (`/ui`) and Swagger UI (`/docs`) in a real browser.

Debian's ``chromium`` (``scripts/setup.sh --dev`` installs it) driven by
Playwright for Python; Playwright's own browser download is never used (it
cannot run offline). Skipped, with the reason, only where no browser exists.

``FUSIONSERVE_UPDATE_SCREENSHOT=1`` also writes the playground's screenshot to
``docs/playground.png`` (the one the README shows).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, RunningServer, Sample

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake microphone (a tone) that needs no permission prompt, for the recording test.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary (install Debian's `chromium`: scripts/setup.sh --dev)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the test extra pins it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def _open_playground(page: Any, server: RunningServer, model: str) -> None:
    page.goto(f"{server.http_url}/ui")
    page.wait_for_selector("#model-select:not([disabled])")
    page.select_option("#model-select", model)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_playground_predicts_from_an_image_and_an_audio_file(
    page: Any, running_server: RunningServer, samples: list[Sample], tmp_path: Path
) -> None:
    sample = samples[0]
    image = _file(tmp_path / "digit.png", sample.png)
    audio = _file(tmp_path / "digit.wav", sample.wav)
    _open_playground(page, running_server, "digits-fusion")
    page.set_input_files("#image-input", str(image))
    page.set_input_files("#audio-input", str(audio))
    page.fill("#top-k-input", "3")
    page.click("#submit")
    page.wait_for_selector("#result .bar")

    labels = page.locator("#result .bar").evaluate_all("rows => rows.map(r => r.dataset.label)")
    modalities = page.locator("#modalities .chip").all_inner_texts()
    expected = httpx.post(
        f"{running_server.http_url}/v1/models/digits-fusion/predict",
        files={"image": ("digit.png", sample.png), "audio": ("digit.wav", sample.wav)},
        data={"top_k": "3"},
    ).json()
    assert labels == [p["label"] for p in expected["predictions"]]
    assert sorted(modalities) == ["audio", "image"]
    curl = page.inner_text("#curl")
    assert (
        "/v1/models/digits-fusion/predict" in curl
        and "image=@digit.png" in curl
        and "audio=@digit.wav" in curl
    )

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("FUSIONSERVE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "playground.png")


def test_playground_shows_the_servers_error_next_to_the_field(
    page: Any, running_server: RunningServer, tmp_path: Path
) -> None:
    not_an_image = _file(tmp_path / "notes.png", b"%PDF-1.7\nthis is not an image\n")
    _open_playground(page, running_server, "digits-fusion")
    page.set_input_files("#image-input", str(not_an_image))
    page.click("#submit")
    error = page.locator("#image-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("415:")
    assert page.inner_text("#status").startswith("failed (415)")
    assert page.is_enabled("#submit")  # no spinner left behind


def test_playground_compares_the_inputs_of_an_embedding_model(
    page: Any, running_server: RunningServer, samples: list[Sample], tmp_path: Path
) -> None:
    sample = samples[1]
    _open_playground(page, running_server, "digits-embed")
    page.set_input_files("#image-input", str(_file(tmp_path / "d.png", sample.png)))
    page.fill("#text-input", sample.text)
    page.click("#submit")
    table = page.locator("#similarity table.sim")
    table.wait_for()
    headers = table.locator("tr").first.locator("th").all_inner_texts()
    assert headers[1:] == ["image", "text", "fused"]
    diagonal = table.locator("tr").nth(1).locator("td").first.inner_text()
    assert diagonal == "1.000"


def test_playground_asks_for_the_api_token(page: Any, token_server: RunningServer) -> None:
    _open_playground(page, token_server, "digits-embed")
    page.fill("#text-input", "seven")
    page.click("#submit")
    page.locator("#token-error").wait_for(state="visible")
    assert page.inner_text("#token-error").startswith("401:")
    page.fill("#token-input", "s3cret")
    page.dispatch_event("#token-input", "change")
    page.wait_for_selector("#model-select:not([disabled])")
    page.select_option("#model-select", "digits-embed")
    page.click("#submit")
    page.wait_for_selector("#answer:not([hidden])")
    assert page.locator("#modalities .chip").all_inner_texts() == ["text"]
    assert page.inner_text("#token-error") == ""
    assert "Authorization: Bearer $FUSIONSERVE_API_TOKEN" in page.inner_text("#curl")


def test_swagger_ui_try_it_out_uploads_an_image_to_predict(
    page: Any, running_server: RunningServer, samples: list[Sample], tmp_path: Path
) -> None:
    image = _file(tmp_path / "digit.png", samples[3].png)
    page.goto(f"{running_server.http_url}/docs")
    operation = page.locator("#operations-inference-predict_v1_models__model__predict_post")
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator("input[placeholder=model]").fill("digits-fusion")
    operation.locator("input[type=file]").first.set_input_files(str(image))
    operation.locator("input[placeholder=text]").fill("")
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    body = operation.locator(".live-responses-table tbody .response-col_description pre").first.inner_text()
    assert status.inner_text().strip() == "200", body
    assert '"predictions"' in body and '"image"' in body and '"text"' not in body


def test_playground_records_the_microphone_as_wav(browser: Any, running_server: RunningServer) -> None:
    """Chromium's fake microphone (a tone) → MediaRecorder → Web Audio → a WAV the server accepts."""
    context = browser.new_context()
    context.grant_permissions(["microphone"])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        _open_playground(page, running_server, "digits-fusion")
        page.click("#record")
        page.wait_for_selector("#record.recording")
        page.wait_for_timeout(1500)  # record a second and a half of the tone
        page.click("#record")
        page.wait_for_function(
            "document.getElementById('audio-info').textContent.startsWith('recording.wav')"
        )
        page.click("#submit")
        page.wait_for_selector("#result .bar")
        assert page.locator("#modalities .chip").all_inner_texts() == ["audio"]
        assert page.inner_text("#audio-error") == ""
    finally:
        context.close()
