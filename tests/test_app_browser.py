"""`petseg-bench app` end to end in a real browser: the page is served on 127.0.0.1 and
driven in headless Chromium (Debian's ``chromium``, found on the PATH or through
``PETSEG_CHROMIUM``; Playwright never downloads a browser here).

Screenshots are kept as test artefacts: under ``PETSEG_TEST_ARTIFACTS`` when set, else
in the test's pytest temporary folder (kept for the last three runs); the path is printed.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import statistics
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from app_support import pet_photo, save, train_checkpoints

pytest.importorskip("gradio", reason="the app needs Gradio (pip install 'petseg-bench[app]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright (pip install playwright)")
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.*")  # Gradio's own deprecation notices

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: The test's bound on click-to-overlay: a sanity check that holds on a machine busy with
#: other jobs (2.6 s seen on 2 starved cores). The figure is printed; benchmarks/app_latency.py
#: measures it against the 1 s target (about 0.2 s with a core free).
LATENCY_BOUND_S = 10.0


def find_chromium() -> str | None:
    given = os.environ.get("PETSEG_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set PETSEG_CHROMIUM=/path/to/chrome)")
    return path


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = os.environ.get("PETSEG_TEST_ARTIFACTS")
    path = Path(folder) / "app" if folder else tmp_path_factory.mktemp("app-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """Start the app on 127.0.0.1 for a checkpoints folder: ``serve(folder) -> url``."""
    from petseg_bench.app.page import launch

    demos = []

    def start(folder: Path) -> str:
        demo = launch(folder, "127.0.0.1", free_port(), block=False)
        demos.append(demo)
        return demo.local_url

    yield start
    for demo in demos:
        demo.close()


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records every request leaving 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    pg.external = []
    pg.on("request", lambda r: pg.external.append(r.url)
          if urlparse(r.url).hostname not in ("127.0.0.1", "localhost", None) and not r.url.startswith("data:") else None)
    yield pg
    context.close()


def img_src(pg, sel: str) -> str | None:
    return pg.evaluate("(sel) => { const i = document.querySelector(sel + ' img'); return i ? i.src : null }", sel)


def wait_new_image(pg, sel: str, old: str | None, timeout: float = 30000) -> str:
    """Wait until the image in ``sel`` has a new source and has loaded; return it."""
    pg.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel + ' img');"
        " return i && i.src !== old && i.complete && i.naturalWidth > 0 }",
        arg=[sel, old], polling="raf", timeout=timeout)
    return img_src(pg, sel)


def fetch(pg, sel: str) -> np.ndarray:
    """The pixels of the image shown in ``sel``, downloaded as the browser did (its source
    is read again if a download fails: the page may be swapping it)."""
    problem = ""
    for _ in range(3):
        url = img_src(pg, sel)
        response = pg.request.get(url)
        body = response.body()
        try:
            return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - said below, with what came back
            problem = f"{url}: HTTP {response.status}, {len(body)} bytes {body[:80]!r}: {exc}"
            time.sleep(0.5)
    raise AssertionError(problem)


def status(pg) -> str:
    return pg.locator("#status").inner_text()


def wait_status(pg, text: str, timeout: float = 30000) -> str:
    pg.wait_for_function("(t) => { const s = document.querySelector('#status'); return s && s.innerText.includes(t) }",
                         arg=text, timeout=timeout)
    return status(pg)


def upload(pg, path: Path) -> None:
    pg.locator("#photo input[type=file]").set_input_files(str(path))


def click_at(pg, fx: float, fy: float) -> float:
    """Click at (fx, fy), fractions of the image shown in the click view; seconds until the
    new click view and the clean overlay are both on screen."""
    box = pg.locator("#click-view img").bounding_box()
    w, h = pg.evaluate("() => { const i = document.querySelector('#click-view img'); return [i.naturalWidth, i.naturalHeight] }")
    scale = min(box["width"] / w, box["height"] / h)  # the image is fitted inside its box
    x0, y0 = box["x"] + (box["width"] - w * scale) / 2, box["y"] + (box["height"] - h * scale) / 2
    old = img_src(pg, "#click-view")
    t0 = time.perf_counter()
    pg.mouse.click(x0 + w * scale * fx, y0 + h * scale * fy)
    wait_new_image(pg, "#click-view", old)
    pg.wait_for_function("() => { const i = document.querySelector('#clean img'); return i && i.complete && i.naturalWidth > 0 }",
                         polling="raf")
    return time.perf_counter() - t0


@pytest.mark.slow  # about 20-40 s on 2 busy cores: training the tiny models, then the page
def test_upload_choose_click_and_perturb_in_a_browser(tmp_path_factory, serve, page, artefacts):
    ckpts = train_checkpoints(tmp_path_factory)
    pg = page
    pg.goto(serve(ckpts))
    pg.wait_for_selector("#photo")
    work = tmp_path_factory.mktemp("uploads")
    photo = pet_photo(96, 120)
    upload(pg, save(photo, work / "pet.png"))
    pg.locator("#model input").click()
    pg.get_by_role("option", name="PointCLIP").click()
    wait_status(pg, "click on the pet")
    latencies = [click_at(pg, fx, 0.5) for fx in (0.45, 0.5, 0.55)]
    text = wait_status(pg, "PointCLIP+U-Net")
    assert "backbone" in text and "clip:petseg-tiny-vit:none" in text and "Traceback" not in text
    clean = fetch(pg, "#clean")
    assert clean.shape == photo.shape and not np.array_equal(clean, photo)  # the overlay is drawn
    heat = fetch(pg, "#click-view")
    y, x = int(0.5 * photo.shape[0]), int(0.55 * photo.shape[1])  # the last click
    assert heat[y, x, 0] > photo[y, x, 0] + 60  # the click's heatmap (red) is shown where it landed
    legend = pg.locator("#legend").inner_text()
    assert all(word in legend for word in ("background", "cat", "dog", "%"))
    pg.screenshot(path=str(artefacts / "clicked.png"), full_page=True)

    old = img_src(pg, "#perturbed")
    pg.locator("#level input[type=range]").focus()
    for _ in range(6):
        pg.keyboard.press("ArrowRight")
    wait_new_image(pg, "#perturbed", old)
    text = wait_status(pg, "gaussian_noise level 6")
    perturbed = fetch(pg, "#perturbed")
    clean = fetch(pg, "#clean")
    assert perturbed.shape == photo.shape
    assert not np.array_equal(perturbed, photo) and not np.array_equal(perturbed, clean)
    assert "gaussian_noise level 6" in pg.locator("#legend").inner_text()
    pg.screenshot(path=str(artefacts / "perturbed.png"), full_page=True)

    # bad input: one clear line each (and a warning), and the page keeps working
    (work / "notes.png").write_text("not an image at all\n")
    upload(pg, work / "notes.png")
    wait_status(pg, "not an image")
    full = save(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8), work / "full.jpg", quality=90)
    (work / "cut.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    upload(pg, work / "cut.jpg")
    wait_status(pg, "truncated or corrupt")
    pg.screenshot(path=str(artefacts / "bad-upload.png"), full_page=True)
    upload(pg, work / "pet.png")
    wait_status(pg, "click on the pet")  # a new photo: the point is placed afresh
    assert "Traceback" not in pg.content()

    median = statistics.median(latencies)
    print(f"\nclick-to-overlay in Chromium: median {1000 * median:.0f} ms "
          f"({', '.join(f'{1000 * s:.0f}' for s in latencies)} ms); screenshots in {artefacts}")
    assert median < LATENCY_BOUND_S
    assert pg.external == [], f"the page reached beyond 127.0.0.1: {pg.external[:5]}"


def test_without_checkpoints_the_page_says_how_to_get_one(tmp_path, serve, page, artefacts):
    pg = page
    pg.goto(serve(tmp_path / "nothing-here"))
    text = wait_status(pg, "No checkpoints")
    assert "petseg-bench train" in text and "--checkpoints" in text
    upload(pg, save(pet_photo(), tmp_path / "pet.png"))
    wait_status(pg, "No checkpoints")
    assert "Traceback" not in pg.content()
    pg.screenshot(path=str(artefacts / "no-checkpoints.png"), full_page=True)
