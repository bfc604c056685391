"""Cost of the ImageNet-C perturbations per image, against the built-in gaussian_noise.

On the same N real test images at their original resolution (read in place, never
copied), time every ``imagenet_c_*`` perturbation's ``apply`` at severities 1, 3 and 5,
one batch of N images per call (as the sweep does), and print milliseconds per image
and the ratio to a baseline measured in the same run: the seed's ``gaussian_noise``
(perturbations/noise.py) at std 10 on the same images. Each corruption is called once
before timing; that first call (library import, numba compilation of glass blur,
first frost texture) is printed separately. Needs ``pip install 'petseg-bench[imagenet-c]'``.

``--upscale F`` enlarges every image F times (Lanczos) before timing: the shared data
copy is downscaled to a 256-px longer side, and ``--upscale 2`` brings it near the
official release's size (about 500 x 375 px) to estimate the cost there; the output
says so.

    python benchmarks/imagenet_c_cost.py --images 8
    python benchmarks/imagenet_c_cost.py --data-root ../shared/data/oxford-iiit-pet --images 32 --json out.json
    python benchmarks/imagenet_c_cost.py --images 8 --upscale 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from petseg_bench_perturbations import imagenet_c  # noqa: E402
from petseg_bench_perturbations.noise import gaussian_noise  # noqa: E402

SEVERITIES = (1, 3, 5)
BASELINE_STD = 10.0
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/oxford-iiit-pet"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in (imagenet_c.LIBRARY, "numpy", "numba", "scipy", "scikit-image", "opencv-python-headless",
                 "opencv-python", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def load_images(root: Path, n: int, upscale: float = 1.0) -> list[np.ndarray]:
    folder = root / "images" if (root / "images").is_dir() else root
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no *.jpg under {folder} (pass --data-root)")
    step = max(1, len(paths) // n)  # spread over breeds: the files are sorted by breed
    images = []
    for p in paths[::step]:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if upscale != 1.0:
                im = im.resize((round(im.width * upscale), round(im.height * upscale)), Image.LANCZOS)
            images.append(np.asarray(im).copy())
        if len(images) == n:
            break
    return images


def rngs(n: int, key: int) -> list[np.random.Generator]:
    return [np.random.default_rng(np.random.SeedSequence([0, key, i])) for i in range(n)]


def ms_per_image(fn, images, value, key: int, repeat: int) -> float:
    best = float("inf")
    for r in range(repeat):
        gens = rngs(len(images), key * 100 + r)
        t0 = time.perf_counter()
        fn(images, value, gens)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(images)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("PETSEG_DATA") or DEFAULT_DATA))
    ap.add_argument("--images", type=int, default=8, help="N images, one batch per call")
    ap.add_argument("--repeat", type=int, default=2, help="timed calls per cell; the fastest counts")
    ap.add_argument("--only", default="", help="comma-separated corruption names (default: all 19)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--upscale", type=float, default=1.0,
                    help="enlarge each image F times (Lanczos) first, e.g. 2 for the official release's size")
    args = ap.parse_args()

    missing = imagenet_c.missing_extra()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    images = load_images(args.data_root, args.images, args.upscale)
    sizes = sorted({im.shape[:2] for im in images}, key=lambda s: -s[0] * s[1])
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(imagenet_c.ALL)
    specs = {s.name: s for s in imagenet_c.specs()}

    gaussian_noise(images[:1], BASELINE_STD, rngs(1, 0))  # warm-up
    base = ms_per_image(gaussian_noise, images, BASELINE_STD, 1, max(args.repeat, 3))

    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), {platform.platform()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    where = "original resolution" if args.upscale == 1.0 else f"upscaled {args.upscale:g}x (Lanczos)"
    print(f"{len(images)} images from {args.data_root}, {where} "
          f"({min(s[0] for s in sizes)}-{max(s[0] for s in sizes)} x {min(s[1] for s in sizes)}-"
          f"{max(s[1] for s in sizes)} px, {np.mean([im.shape[0] * im.shape[1] for im in images]) / 1e3:.0f} kpx mean)")
    print(f"baseline: gaussian_noise (perturbations/noise.py) std {BASELINE_STD:g}: {base:.2f} ms/image")
    print()
    header = f"{'corruption':<20} {'first call s':>12} " + " ".join(
        f"{'sev ' + str(s) + ' ms/img':>14} {'x base':>7}" for s in SEVERITIES)
    print(header)
    print("-" * len(header))
    rows = {}
    for k, name in enumerate(names):
        spec = specs[f"imagenet_c_{name}"]
        t0 = time.perf_counter()
        spec.apply(images[:1], 1, rngs(1, 0))
        first = time.perf_counter() - t0
        cells = {s: ms_per_image(spec.apply, images, s, 10 + k * 10 + s, args.repeat) for s in SEVERITIES}
        rows[name] = {"first_call_s": first, **{f"severity_{s}_ms": v for s, v in cells.items()},
                      **{f"severity_{s}_x_baseline": v / base for s, v in cells.items()}}
        print(f"{name:<20} {first:>12.2f} " + " ".join(f"{cells[s]:>14.1f} {cells[s] / base:>7.1f}" for s in SEVERITIES),
              flush=True)
    mean_ms = {s: float(np.mean([rows[n][f"severity_{s}_ms"] for n in names])) for s in SEVERITIES}
    print("-" * len(header))
    print(f"{'mean':<20} {'':>12} " + " ".join(f"{mean_ms[s]:>14.1f} {mean_ms[s] / base:>7.1f}" for s in SEVERITIES))
    slowest = sorted(names, key=lambda n: -rows[n]["severity_5_ms"])[:3]
    print(f"slowest at severity 5: {', '.join(slowest)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
            "cores": os.cpu_count(), "versions": versions(), "images": len(images), "upscale": args.upscale,
            "mean_kpx": float(np.mean([im.shape[0] * im.shape[1] for im in images]) / 1e3),
            "baseline_ms": base, "baseline": f"gaussian_noise std {BASELINE_STD:g}", "corruptions": rows,
        }, indent=2))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
