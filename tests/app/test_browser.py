"""The web app end to end in Debian's chromium (Playwright): what a user clicks, what they download.

The server is the real console entry (``python -m medsam3.app``) on a free local port with the
tiny random SAM3; it is stopped when the module's tests end. Screenshots go to
``test-artifacts/app/`` (or ``$MEDSAM3_TEST_ARTIFACTS/app``); ``MEDSAM3_UPDATE_SCREENSHOT=1``
also refreshes ``docs/app.png`` (the picture in docs/app.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, write_config

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")

from medsam3.cli.infer import main as infer_main  # noqa: E402

ARTIFACTS = Path(os.environ.get("MEDSAM3_TEST_ARTIFACTS", REPO / "test-artifacts")) / "app"
README_SCREENSHOT = REPO / "docs" / "app.png"
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (.ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def app_config(tmp_path_factory, tiny_checkpoint) -> Path:
    folder = tmp_path_factory.mktemp("app")
    return write_config(folder / "tiny.yaml", tiny_checkpoint, hardware={"device": "cpu"})


def _serve(args: list[str], work: Path):
    """``python -m medsam3.app ARGS`` on a free port; yields its URL; always stopped afterwards."""
    port = _free_port()
    log = open(work / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsam3.app", *args, "--port", str(port), "--work-dir", str(work / "files")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{(work / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url}:\n{(work / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(app_config, tmp_path_factory):
    """The app on the tiny random SAM3 (no adapter)."""
    yield from _serve(["--config", str(app_config), "--weights", "none"], tmp_path_factory.mktemp("app_work"))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The app on the shipped demo model: a closed vocabulary and a recorded threshold."""
    yield from _serve(["--weights", "demo", "--device", "cpu"], tmp_path_factory.mktemp("demo_work"))


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(server)
    tab.wait_for_selector("#run")
    yield tab
    context.close()


def _upload(page, path: Path) -> None:
    """Like a user: clear the previous file (if any), then choose ``path``."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _wait_text(page, selector: str, text: str) -> str:
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)", arg=[selector, text]
    )
    return page.inner_text(selector)


def _image_src(page, selector: str) -> str | None:
    return page.evaluate("(sel) => document.querySelector(sel + ' img')?.getAttribute('src') || null", selector)


def _wait_new_image(page, selector: str, old: str | None) -> str:
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel + ' img'); return i && i.complete && "
        "i.naturalWidth > 0 && i.getAttribute('src') !== old; }",
        arg=[selector, old],
    )
    return _image_src(page, selector)


def _set_slider(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _download(page, name: str, dest: Path) -> Path:
    with page.expect_download() as info:
        page.locator(f"#downloads a[download='{name}']").click()
    info.value.save_as(dest)
    return dest


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_image_prompt_threshold_and_downloads_match_infer_sam(page, tmp_path, monkeypatch, app_config, rgb_image):
    image = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(image)
    _upload(page, image)
    assert "130 x 90 px" in _wait_text(page, "#info", "scan.png")
    page.fill("#prompts textarea", "liver")
    page.click("#run")
    first = _wait_text(page, "#status", "detection(s)")
    assert "image embedding" in first and "cached" not in first
    overlay = _wait_new_image(page, "#overlay", None)

    # The slider re-filters the cached outputs; the downloads are then infer_sam.py's files at 0.05.
    _set_slider(page, "threshold", 0.05)
    assert "re-filtered without the model" in _wait_text(page, "#status", "re-filtered")
    _wait_new_image(page, "#overlay", overlay)
    _shot(page, "image.png")
    mask = _download(page, "00_liver.png", tmp_path / "app_mask.png")
    detections = _download(page, "detections.json", tmp_path / "app_detections.json")

    monkeypatch.chdir(tmp_path)  # the JSON records the image as given: "scan.png" on both sides
    cli_masks = tmp_path / "cli_masks"
    code = infer_main(
        ["--config", str(app_config), "--image", "scan.png", "--prompt", "liver", "--weights", "none"]
        + ["--threshold", "0.05", "--json", "cli.json", "--masks-dir", str(cli_masks), "-q"]
    )
    assert code == 0
    assert mask.read_bytes() == (cli_masks / "00_liver.png").read_bytes()
    assert np.asarray(Image.open(mask)).any(), "no detection at threshold 0.05: the comparison would prove little"
    assert detections.read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert json.loads(detections.read_text())["threshold"] == 0.05

    # A second prompt on the same image re-uses the embedding.
    page.fill("#prompts textarea", "liver, tumor")
    page.click("#run")
    second = _wait_text(page, "#status", "image embedding cached")
    assert "1 new prompt(s)" in second


def test_volume_slice_slider_moves_the_overlay(page, tmp_path):
    data = np.zeros((40, 48, 7), np.float32)
    data[10:30, 12:36, 1:6] = 200
    data[:, :, 3] += np.linspace(0, 80, 48, dtype=np.float32)[None, :]  # slices differ from each other
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1])), path)
    _upload(page, path)
    assert "7 slices" in _wait_text(page, "#info", "volume")
    assert page.locator("#slice").is_visible()
    page.fill("#prompts textarea", "liver")
    page.click("#run")
    assert "on 7 slices" in _wait_text(page, "#status", "slices in")
    overlay = _wait_new_image(page, "#overlay", None)
    picture = _image_src(page, "#picture")
    names = page.eval_on_selector_all("#downloads a[download]", "links => links.map(a => a.download)")
    assert {"labels.nii.gz", "legend.json", "montage.png"} <= set(names)
    assert "liver" in page.inner_text("#table")

    _set_slider(page, "slice", 1)
    _wait_new_image(page, "#overlay", overlay)
    _wait_new_image(page, "#picture", picture)
    _shot(page, "volume.png")


def test_bad_uploads_show_a_message_and_the_server_keeps_serving(page, tmp_path, rgb_image):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    _upload(page, broken)
    message = _wait_text(page, "#status", "Error")
    assert "broken.png" in message and "not a valid PNG" in message
    _shot(page, "error.png")

    pydicom_data = pytest.importorskip("pydicom.data")
    full = Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(full[: len(full) // 2])
    _upload(page, truncated)
    assert "truncated" in _wait_text(page, "#status", "truncated.dcm")

    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), four_d)
    _upload(page, four_d)
    assert "no volume index" in _wait_text(page, "#status", "4D NIfTI")

    good = tmp_path / "good.png"
    Image.fromarray(rgb_image).save(good)
    _upload(page, good)
    _wait_text(page, "#info", "good.png")
    assert "Error" not in page.inner_text("#status")


def test_a_bundled_example_opens_with_one_click(page):
    from medsam3.app.ui import example_files

    examples = [Path(e).name for e in example_files()]
    if not examples:
        pytest.skip("no example scans are bundled in this install (medsam3/demo/examples)")
    page.get_by_text(examples[0], exact=True).click()
    _wait_text(page, "#info", examples[0])
    _wait_new_image(page, "#picture", None)
    assert "Error" not in page.inner_text("#status")


def test_two_users_at_once_are_queued_not_crashed(browser, server, tmp_path, rgb_image):
    image = tmp_path / "shared.png"
    Image.fromarray(rgb_image).save(image)
    contexts = [browser.new_context() for _ in range(2)]
    try:
        pages = [c.new_page() for c in contexts]
        for tab in pages:
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(server)
            tab.wait_for_selector("#run")
            _upload(tab, image)
            _wait_text(tab, "#info", "shared.png")
            tab.fill("#prompts textarea", "lesion, kidney")
        for tab in pages:
            tab.click("#run")
        for tab in pages:
            assert "detection(s)" in _wait_text(tab, "#status", "detection(s)")
    finally:
        for c in contexts:
            c.close()


def test_readme_screenshot(page, tmp_path):
    """The docs' picture of the app (docs/app.md): a real CT slice (pydicom's CT_small.dcm) with a box."""
    pydicom_data = pytest.importorskip("pydicom.data")
    ct = tmp_path / "CT_small.dcm"
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), ct)
    _upload(page, ct)
    assert "soft_tissue" in _wait_text(page, "#info", "CT_small.dcm")
    # Two clicks on the picture add a positive box at those pixels of the image.
    before = _wait_new_image(page, "#picture", None)
    img = page.locator("#picture img")
    size = img.bounding_box()
    img.click(position={"x": size["width"] * 0.25, "y": size["height"] * 0.3})
    _wait_text(page, "#status", "opposite corner")
    img.click(position={"x": size["width"] * 0.8, "y": size["height"] * 0.85})
    _wait_text(page, "#status", "added a positive box")
    x1, y1, x2, y2 = (float(v) for v in page.input_value("#boxes textarea").split()[1:])
    assert page.input_value("#boxes textarea").startswith("+ ")
    assert np.allclose([x1, y1, x2, y2], [0.25 * 128, 0.3 * 128, 0.8 * 128, 0.85 * 128], atol=3)
    _wait_new_image(page, "#picture", before)  # redrawn with the box
    page.fill("#prompts textarea", "liver, kidney")
    page.click("#run")
    _wait_text(page, "#status", "detection(s)")
    _set_slider(page, "threshold", 0.1)
    _wait_text(page, "#status", "re-filtered")
    page.wait_for_function("document.querySelector('#overlay img')?.complete")
    shot = _shot(page, "readme.png")
    if os.environ.get("MEDSAM3_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, README_SCREENSHOT)


def test_demo_app_starts_at_the_recorded_threshold_and_refuses_unknown_concepts(browser, demo_server):
    from medsam3.adapters.plan import plan_run
    from medsam3.config import load_config

    recorded = plan_run(load_config(None), "demo", check_hub=False).threshold  # what infer_sam.py and evaluate use
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(demo_server)
        page.wait_for_selector("#run")
        assert float(page.input_value("#threshold input[type=number]")) == pytest.approx(recorded)
        _upload(page, REPO / "medsam3" / "demo" / "examples" / "ct_dicom_slice.dcm")
        _wait_text(page, "#info", "ct_dicom_slice.dcm")
        page.fill("#prompts textarea", "liver, pancreas")
        page.click("#run")
        message = _wait_text(page, "#status", "Error")
        assert "'pancreas' is not a concept this model was trained on" in message and "'liver'" in message
        page.fill("#prompts textarea", "liver")
        assert page.is_checked("#per_concept input")  # the demo records a threshold per concept: applied
        page.click("#run")
        assert "detection(s)" in _wait_text(page, "#status", "detection(s)")
        _shot(page, "demo_unknown_concept.png")
        _set_slider(page, "threshold", 0.05)  # the slider now holds for every concept, as --threshold does
        page.wait_for_function("() => !document.querySelector('#per_concept input').checked")
    finally:
        context.close()
