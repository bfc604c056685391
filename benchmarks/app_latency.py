"""`petseg-bench app` measured as a person uses it: click-to-overlay latency in headless
Chromium per model, and the server's peak RSS for an 8000 x 8000 upload.

    python benchmarks/app_latency.py --checkpoints DIR [--clicks 7] [--chromium /usr/bin/chromium]
    python benchmarks/app_latency.py --checkpoints DIR --screenshot docs/app.png --model effnet_unet

The app runs as its own process (``petseg-bench app``), so its memory is its own: the
peak RSS is VmHWM of that process, read from /proc before and after the upload. Latency
is from the mouse click on the image to the new click view and clean overlay both drawn
(the page's round trip: event, model, restore, overlay, PNG, download, paint). The photo
is synthetic (drawn here: no dataset image), 640 x 480 px. Results go to
``benchmarks/results/app_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
#: Where on the demo photo the clicks land (fractions of width, height): on the cat's body.
CLICKS = [(0.40, 0.60), (0.45, 0.62), (0.50, 0.58), (0.55, 0.64), (0.42, 0.66), (0.52, 0.60), (0.47, 0.57)]


def demo_photo(h: int = 480, w: int = 640, seed: int = 7) -> np.ndarray:
    """A drawn ginger cat on a floor before a wall: synthetic, no dataset image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = int(h * 0.62)
    img = np.zeros((h, w, 3), np.float32)
    img[:horizon] = np.array([196, 206, 214], np.float32) * (0.9 + 0.1 * yy[:horizon, :, None] / horizon)
    img[horizon:] = np.array([150, 112, 80], np.float32) * (0.85 + 0.15 * (yy[horizon:, :, None] - horizon) / (h - horizon))
    for x0 in range(0, w, 80):  # floor boards
        img[horizon:, x0:x0 + 2] *= 0.7
    fur = np.zeros((h, w), np.uint8)
    cx, cy, hx, hy, ear = int(w * 0.48), int(h * 0.62), int(w * 0.66), int(h * 0.36), int(h * 0.12)
    cv2.ellipse(fur, (cx, cy), (int(w * 0.2), int(h * 0.17)), 0, 0, 360, 255, -1)
    cv2.circle(fur, (hx, hy), int(h * 0.14), 255, -1)
    for s in (-1, 1):
        cv2.fillPoly(fur, [np.array([(hx + s * ear, hy - ear // 3), (hx + s * ear // 2, hy - 2 * ear), (hx + s * ear // 6, hy - ear)])], 255)
    cv2.ellipse(fur, (int(w * 0.26), int(h * 0.5)), (int(w * 0.1), int(h * 0.03)), -35, 0, 360, 255, -1)
    for lx in (0.38, 0.46, 0.55, 0.6):
        cv2.rectangle(fur, (int(w * lx), cy), (int(w * lx) + int(w * 0.035), int(h * 0.84)), 255, -1)
    alpha = cv2.GaussianBlur(fur, (0, 0), 1.5).astype(np.float32)[..., None] / 255
    stripes = 0.8 + 0.2 * np.sin(xx / 9.0 + 3 * np.sin(yy / 23.0))[..., None]
    coat = np.array([214, 134, 58], np.float32) * stripes + rng.normal(0, 10, (h, w, 1)).astype(np.float32)
    img = img * (1 - alpha) + coat * alpha
    for s in (-1, 1):
        cv2.circle(img, (hx + s * int(h * 0.05), hy - int(h * 0.02)), int(h * 0.018), (40, 80, 30), -1)
    cv2.circle(img, (hx, hy + int(h * 0.04)), int(h * 0.012), (120, 60, 60), -1)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(checkpoints: Path, port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("petseg-bench")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(exe), "app", "--checkpoints", str(checkpoints), "--port", str(port)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}")
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the app did not start within 120 s")


def vm(pid: int) -> dict:
    """VmHWM (peak RSS) and VmRSS of ``pid`` in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def src(pg, sel: str):
    return pg.evaluate("(s) => { const i = document.querySelector(s + ' img'); return i ? i.src : null }", sel)


def wait_image(pg, sel: str, old) -> None:
    pg.wait_for_function("([s, o]) => { const i = document.querySelector(s + ' img');"
                         " return i && i.src !== o && i.complete && i.naturalWidth > 0 }",
                         arg=[sel, old], polling="raf", timeout=60000)


def wait_status(pg, text: str, timeout: float = 120000) -> str:
    pg.wait_for_function("(t) => { const s = document.querySelector('#status'); return s && s.innerText.includes(t) }",
                         arg=text, timeout=timeout)
    return pg.locator("#status").inner_text()


def click(pg, fx: float, fy: float) -> float:
    """Seconds from the click to the new click view and clean overlay drawn."""
    box = pg.locator("#click-view img").bounding_box()
    natural = pg.evaluate("() => { const i = document.querySelector('#click-view img'); return [i.naturalWidth, i.naturalHeight] }")
    scale = min(box["width"] / natural[0], box["height"] / natural[1])  # object-fit: contain
    x0 = box["x"] + (box["width"] - natural[0] * scale) / 2
    y0 = box["y"] + (box["height"] - natural[1] * scale) / 2
    old = src(pg, "#click-view")
    t0 = time.perf_counter()
    pg.mouse.click(x0 + natural[0] * scale * fx, y0 + natural[1] * scale * fy)
    wait_image(pg, "#click-view", old)
    pg.wait_for_function("() => { const i = document.querySelector('#clean img'); return i && i.complete && i.naturalWidth > 0 }",
                         polling="raf")
    return time.perf_counter() - t0


def choose(pg, label: str) -> None:
    pg.locator("#model input").click()
    pg.get_by_role("option", name=label).first.click()


def model_labels(pg) -> list[str]:
    """The model dropdown's labels, from the page's own config."""
    return pg.evaluate("() => window.gradio_config.components.find(c => c.props.elem_id === 'model')"
                       ".props.choices.map(c => c[0])")


def set_perturbation(pg, name: str, level: int) -> None:
    pg.locator("#perturbation input").click()
    pg.get_by_role("option", name=name, exact=True).click()
    slider = pg.locator("#level input[type=range]")
    slider.focus()
    for _ in range(level):
        pg.keyboard.press("ArrowRight")
    wait_status(pg, f"{name} level {level}")


def slide(pg) -> float:
    """Seconds from moving the level slider one step up to the new perturbed overlay drawn."""
    old = src(pg, "#perturbed")
    pg.locator("#level input[type=range]").focus()
    t0 = time.perf_counter()
    pg.keyboard.press("ArrowRight")
    wait_image(pg, "#perturbed", old)
    return time.perf_counter() - t0


def slider_home(pg) -> None:
    pg.locator("#level input[type=range]").focus()
    pg.keyboard.press("Home")
    wait_status(pg, "clean (level 0)")


def summary(times: list[float]) -> dict:
    return {"ms": [round(1000 * t) for t in times], "median_ms": round(1000 * statistics.median(times)),
            "max_ms": round(1000 * max(times))}


def measure_models(pg, photo: Path, n: int) -> list[dict]:
    """Per model: click-to-overlay (models that take a click) and slider-to-overlay."""
    pg.locator("#photo input[type=file]").set_input_files(str(photo))
    wait_status(pg, "640x480")
    rows = []
    for label in model_labels(pg):
        choose(pg, label)
        takes_click = "click on the pet" in label
        if takes_click:
            wait_status(pg, "click on the pet")
            click(pg, *CLICKS[0])  # the first click after a switch also loads the model: not counted
        wait_status(pg, label.split(" ·")[0])
        row = {"model": label}
        if takes_click:
            row["click_to_overlay"] = summary([click(pg, *CLICKS[(k + 1) % len(CLICKS)]) for k in range(n)])
        slider_home(pg)
        row["slider_to_overlay"] = summary([slide(pg) for _ in range(min(n, 9))])
        slider_home(pg)
        status = pg.locator("#status").inner_text()
        row["server_model_ms_last"] = float(status.split("· model ")[1].split(" ms")[0]) if "· model " in status else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def measure_huge(pg, pid: int, folder: Path) -> dict:
    """Peak RSS of the app process around an 8000 x 8000 JPEG, then PNG, upload."""
    big = Image.new("RGB", (8000, 8000), (196, 206, 214))
    big.paste((214, 134, 58), (2000, 2500, 6000, 6000))
    out = {"before": vm(pid)}
    for fmt in ("jpg", "png"):
        path = folder / f"huge.{fmt}"
        big.save(path, quality=85) if fmt == "jpg" else big.save(path, compress_level=1)
        pg.locator("#photo button[aria-label='Remove Image']").first.click()
        pg.locator("#photo input[type=file]").set_input_files(str(path))
        wait_status(pg, "8000x8000 px, downscaled to 1024x1024 px")
        out[f"after_{fmt}"] = vm(pid)
        out[f"{fmt}_bytes"] = path.stat().st_size
        print(f"8000x8000 {fmt}: app peak RSS {out[f'after_{fmt}']['VmHWM']:.0f} MB "
              f"(before any upload {out['before']['VmHWM']:.0f} MB)", flush=True)
    return out


def screenshot(pg, photo: Path, label: str, perturbation: str, level: int, path: Path) -> None:
    pg.locator("#photo input[type=file]").set_input_files(str(photo))
    wait_status(pg, "640x480")
    label = next(name for name in model_labels(pg) if label in name)
    choose(pg, label)
    time.sleep(1)
    set_perturbation(pg, perturbation, level)
    if "click on the pet" in label:
        click(pg, 0.45, 0.62)
    time.sleep(1)
    pg.screenshot(path=str(path), full_page=True)
    im = Image.open(path).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)  # small in git
    print(f"screenshot: {path} ({path.stat().st_size // 1024} KB)")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", required=True, type=Path)
    ap.add_argument("--clicks", type=int, default=7)
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "app_latency.json")
    ap.add_argument("--screenshot", type=Path, help="write a screenshot of the page here instead of measuring")
    ap.add_argument("--model", default="", help="with --screenshot: the model's dropdown label (a prefix or part)")
    ap.add_argument("--perturbation", default="salt_and_pepper")
    ap.add_argument("--level", type=int, default=5)
    ap.add_argument("--no-huge", action="store_true", help="skip the 8000 x 8000 uploads")
    ap.add_argument("--note", default="", help="what else the machine was doing (kept with the figures)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="app-bench-"))
    photo = work / "demo.png"
    Image.fromarray(demo_photo()).save(photo)
    port = free_port()
    app = start_app(args.checkpoints, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            pg = browser.new_page(viewport={"width": 1400, "height": 1100})
            pg.goto(f"http://127.0.0.1:{port}/")
            pg.wait_for_selector("#photo input[type=file]", state="attached")
            if args.screenshot:
                screenshot(pg, photo, args.model, args.perturbation, args.level, args.screenshot)
                return
            rows = measure_models(pg, photo, args.clicks)
            huge = None if args.no_huge else measure_huge(pg, app.pid, work)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    record = {"cpu": cpu_name(), "cores": os.cpu_count(), "checkpoints": str(args.checkpoints),
              "date": time.strftime("%Y-%m-%d"), "models": rows, "huge_upload_rss_mb": huge,
              "load_average_1min": os.getloadavg()[0], "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.is_file() else []
    existing = [r for r in existing if r.get("checkpoints") != record["checkpoints"]] + [record]
    args.out.write_text(json.dumps(existing, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
