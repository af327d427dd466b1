#!/usr/bin/env python3
"""The web app's latency, through its own page handlers: first prompt on a new image vs a second one.

Drives :class:`medsam3.app.ui.PageHandlers` as the page does (upload, then **Run** with one
prompt, then **Run** with another prompt on the same image, then a threshold change), so each
figure includes what a user waits for: the model (the vision pass only on the first run), the
post-processing, the overlay, table and downloads written. The image is a 480x640 PNG; with
random weights ``--threshold 0`` would keep everything, so the default 0.5 is used as in the page.

  python scripts/bench_app.py --model full --resolution 504    # random full-size SAM3 on CPU
  python scripts/bench_app.py --model tiny                     # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medsam3.app.service import AppService
from medsam3.app.ui import PageHandlers
from medsam3.inference.predictor import Predictor
from medsam3.testing import random_sam3

IMAGE_HW = (480, 640)


def test_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: IMAGE_HW[0], : IMAGE_HW[1]]
    img = (rng.random(IMAGE_HW) * 40 + 40).astype(np.uint8)
    img[((yy - 240) / 150) ** 2 + ((xx - 300) / 220) ** 2 < 1] = 150
    img[((yy - 200) / 40) ** 2 + ((xx - 380) / 50) ** 2 < 1] = 90
    Image.fromarray(img).save(path)
    return path


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "full"], default="full")
    p.add_argument("--resolution", type=int, default=504)
    p.add_argument("--repeats", type=int, default=2, help="fresh images per measurement (default 2)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    model, processor = random_sam3(args.model, args.resolution)
    handlers = PageHandlers(AppService(Predictor(model, processor, device="cpu")))
    print(f"model {args.model} at {args.resolution} px built in {time.perf_counter() - t0:.1f} s")

    firsts, seconds, refilters = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            path = test_image(Path(tmp) / f"scan{k}.png")
            # a different image each repeat: its embedding is not cached
            Image.fromarray(np.asarray(Image.open(path)) ^ np.uint8(k)).save(path)
            upload = handlers.open_upload(str(path), "auto", "")[0]
            first, out = timed(handlers.run, upload, "liver", "", 0.5, 0.5, 0)
            assert "image embedding" in out[-1] and "cached" not in out[-1], out[-1]
            second, out = timed(handlers.run, upload, "kidney", "", 0.5, 0.5, 0)
            assert "image embedding cached" in out[-1], out[-1]
            refilter, _ = timed(handlers.refilter, upload, out[0], 0.3, 0.5)
            firsts.append(first)
            seconds.append(second)
            refilters.append(refilter)
            print(f"image {k}: first prompt {first:.2f} s, second prompt {second:.2f} s, threshold {refilter:.3f} s")
    service = handlers.service
    vision, _ = next(iter(service._embeddings.values()))
    embed_mb = sum(t.nbytes for t in (*vision.fpn_hidden_states, *vision.fpn_position_encoding)) / 2**20
    output_mb = sum(t.nbytes for t in next(iter(service._outputs.values()))) / 2**20
    print(f"cache sizes: one image embedding {embed_mb:.1f} MiB, one prompt's raw outputs {output_mb:.1f} MiB")
    first, second, refilter = (statistics.median(v) for v in (firsts, seconds, refilters))
    print(
        f"median over {args.repeats}: first prompt (vision + prompt) {first:.2f} s, "
        f"second prompt on the same image {second:.2f} s ({first / second:.1f}x faster), "
        f"threshold change {refilter * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
