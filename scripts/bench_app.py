#!/usr/bin/env python3
"""The web app's latency, through its own page handlers: first prompt on a new image vs a second one.

Drives :class:`medsam3.app.ui.PageHandlers` as the page does (upload, then **Run** with one
prompt, then **Run** with another prompt on the same image, then a threshold change), so each
figure includes what a user waits for: the model (the vision pass only on the first run), the
post-processing, the overlay, table and downloads written. The image is a 480x640 PNG; with
random weights ``--threshold 0`` would keep everything, so the default 0.5 is used as in the page.

  python scripts/bench_app.py --model full --resolution 504    # random full-size SAM3 on CPU
  python scripts/bench_app.py --model tiny                     # seconds, a smoke run

``--load``: the app under load, over HTTP as browsers reach it (``gradio_client``), on 127.0.0.1 only.
``medsam3-app`` with a tiny random SAM3 serves 8 concurrent clients x 25 requests mixing 2D images, a
volume, new prompts on the current image, unreadable files, an upload over ``--max-upload-mb`` and a
zip over ``--max-unzipped-mb``. It checks that every good response's masks equal ``infer_sam.py``'s for
the same input, prompt and threshold, that each bad request gets its message and the server keeps
serving; it prints requests, errors, p50/p95 latency, the server's resident memory after 20 and after
200 requests (within 10%), and the files in its work and upload folders before, and after the results
aged out (``--keep-minutes``).

  python scripts/bench_app.py --load                           # ~3-5 minutes on 2 CPU cores
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
REPO = Path(__file__).resolve().parents[1]


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
    p.add_argument("--load", action="store_true", help="the load test over HTTP (see above); tiny model")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25, help="requests per client")
    p.add_argument("--max-seconds", type=float, default=1200, help="abort the load test after this long")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.load:
        raise SystemExit(run_load_test(args.clients, args.requests, args.max_seconds))

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


# -- the load test -----------------------------------------------------------------------------------
LOAD_THRESHOLD = 0.1  # the tiny random model's scores are low: 0.1 keeps some detections to compare
PROMPTS = ["liver", "tumor", "kidney"]
MAX_UPLOAD_MB, MAX_UNZIPPED_MB, KEEP_MINUTES = 2, 1, 0.5
BAD_FILES = {  # name -> what the page must answer
    "broken.png": "not a valid PNG image",
    "notes.txt": "unsupported file extension",
    "bomb.zip": "over this server's limit of 1 MB",
    "huge.png": "",  # over --max-upload-mb: refused by Gradio before it is stored (the client raises)
}


def _load_inputs(folder: Path) -> tuple[list[Path], Path, dict[str, Path]]:
    """4 images (RGB and gray PNG, 16-bit PNG, TIFF), a NIfTI volume, and the bad files."""
    import io
    import zipfile

    import nibabel as nib
    import tifffile

    good = folder / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for k in range(2):
        images.append(test_image(good / f"scan{k}.png"))
        Image.fromarray(np.asarray(Image.open(images[-1])) ^ np.uint8(17 * (k + 1))).save(images[-1])
    gray16 = (rng.random((200, 240)) * 3000).astype(np.uint16)
    gray16[60:140, 80:180] += 20000
    Image.fromarray(gray16).save(good / "xray16.png")
    tifffile.imwrite(good / "slide.tif", rng.integers(0, 255, (180, 220, 3), dtype=np.uint8))
    images += [good / "xray16.png", good / "slide.tif"]
    vol = rng.normal(40, 200, (64, 56, 5)).astype(np.int16)
    vol[20:40, 20:40] += 300
    volume = good / "ct.nii.gz"
    nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1])).to_filename(volume)
    bad = folder / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(3000))
    (bad / "notes.txt").write_text("not an image\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/IM0001", b"\0" * (2 * 2**20))  # 2 MB unpacked, a few KB packed
    (bad / "bomb.zip").write_bytes(buf.getvalue())
    (bad / "huge.png").write_bytes(rng.bytes(3 * 2**20))
    return images, volume, {name: bad / name for name in BAD_FILES}


def _reference(images: list[Path], volume: Path, model_dir: Path, out: Path) -> None:
    """``infer_sam.py`` on the same inputs, one batch per prompt: the masks every response must equal."""
    import subprocess
    import sys

    listing = out / "inputs.txt"
    out.mkdir(parents=True)
    listing.write_text("\n".join(str(p) for p in [*images, volume]) + "\n")
    for prompt in PROMPTS:
        cmd = [sys.executable, str(REPO / "infer_sam.py"), "--input-dir", str(listing), "--prompt", prompt]
        cmd += ["--output-dir", str(out / prompt), "--weights", "none", "--set", f"model.name={model_dir}"]
        cmd += ["--threshold", str(LOAD_THRESHOLD), "--nms-iou", "0.5", "--binary-masks", "-q"]
        subprocess.run(cmd, check=True, timeout=600)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _count_files(*folders: Path) -> int:
    return sum(1 for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file())


def _wait_for(url: str, proc, seconds: float) -> None:
    import httpx

    end = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"medsam3-app exited with code {proc.returncode} before serving")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:  # not listening yet
            last = exc
        time.sleep(1)
    raise SystemExit(f"medsam3-app did not answer on {url} within {seconds:.0f} s ({last})")


class LoadClient:
    """One browser session: its own gradio_client (own session state), its own sequence of requests."""

    def __init__(self, url: str, index: int, images, volume, bad, ref: Path, results: list, lock):
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=str(ref.parent / f"client{index}"))
        self.index, self.images, self.volume, self.bad, self.ref = index, images, volume, bad, ref
        self.results, self.lock = results, lock
        self.current: Path | None = None
        self.compared = self.nonempty = 0
        self.rng = np.random.default_rng(1000 + index)

    def _open(self, path: Path):
        from gradio_client import handle_file

        return self.client.predict(handle_file(str(path)), "auto", "", api_name="/open_upload")

    def _run(self, prompt: str):
        return self.client.predict(prompt, "", LOAD_THRESHOLD, 0.5, 0, api_name="/run")

    def _check_masks(self, path: Path, prompt: str, run_out) -> str | None:
        """None when the downloads equal infer_sam.py's outputs for (path, prompt), else what differs."""
        import nibabel as nib

        overlay, table, downloads, status = run_out
        self.compared += 1
        if not downloads or status.startswith("**Error"):
            return f"no result: {status}"
        files = {
            Path(f if isinstance(f, str) else f["path"]).name: Path(f if isinstance(f, str) else f["path"])
            for f in downloads
        }
        ref_dir = self.ref / prompt / path.name.split(".")[0]
        if path == self.volume:
            got = np.asarray(nib.load(files["labels.nii.gz"]).dataobj)
            want = np.asarray(nib.load(ref_dir / "labels.nii.gz").dataobj)
            self.nonempty += bool(want.any())
            return None if np.array_equal(got, want) else "label map differs from infer_sam.py's"
        name = next((n for n in files if n.endswith(".png") and n[:3] == "00_"), None)
        want_path = next(iter((ref_dir / "masks").glob("00_*.png")), None)
        if name is None or want_path is None:
            return f"mask missing (app {sorted(files)}, cli {want_path})"
        want = np.asarray(Image.open(want_path))
        self.nonempty += bool(want.any())
        same = np.array_equal(np.asarray(Image.open(files[name])), want)
        return None if same else "mask differs from infer_sam.py's"

    def request(self, k: int) -> None:
        kind = ["image", "prompt", "image", "prompt", "volume", "bad", "image", "prompt", "bad", "prompt"][
            (k + self.index) % 10
        ]
        if kind == "prompt" and self.current is None:
            kind = "image"
        t0 = time.perf_counter()
        problem = None
        try:
            if kind == "bad":
                name = list(self.bad)[(k // 5 + self.index) % len(self.bad)]
                kind = f"bad:{name}"
                self.current = None  # the page forgets the previous upload when a new one is refused
                try:
                    status = self._open(self.bad[name])[-1]
                    expected = BAD_FILES[name]
                    if not expected or expected not in status:
                        problem = f"{name}: unexpected answer {status!r}"
                except Exception as exc:  # noqa: BLE001 - the one refusal that arrives as an exception
                    if name != "huge.png":
                        problem = f"{name}: {type(exc).__name__}: {exc}"
                    elif "too large" not in str(exc).lower() and "max" not in str(exc).lower():
                        problem = f"huge.png refused without its message: {exc}"
            else:
                if kind in ("image", "volume"):
                    path = self.volume if kind == "volume" else self.images[int(self.rng.integers(len(self.images)))]
                    status = self._open(path)[-1]
                    if status:
                        raise RuntimeError(f"upload of {path.name} answered {status!r}")
                    self.current = path
                prompt = PROMPTS[int(self.rng.integers(len(PROMPTS)))]
                problem = self._check_masks(self.current, prompt, self._run(prompt))
        except Exception as exc:  # noqa: BLE001 - counted and printed: the load test reports every error
            problem = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.results.append((kind, time.perf_counter() - t0, problem))


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def run_load_test(clients: int, requests: int, max_seconds: float) -> int:
    import os
    import subprocess
    import sys
    import threading

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medsam3_load_") as tmp:
        tmp = Path(tmp)
        from medsam3.testing import build_tiny_checkpoint

        model_dir = build_tiny_checkpoint(tmp / "tiny")
        images, volume, bad = _load_inputs(tmp / "inputs")
        print("reference outputs with infer_sam.py ...", flush=True)
        _reference(images, volume, model_dir, tmp / "reference")
        work, cache = tmp / "work", tmp / "gradio"
        port = _free_port()
        env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        cmd = [sys.executable, "-m", "medsam3.app", "--weights", "none", "--set", f"model.name={model_dir}"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--work-dir", str(work), "-q"]
        cmd += ["--max-upload-mb", str(MAX_UPLOAD_MB), "--max-unzipped-mb", str(MAX_UNZIPPED_MB)]
        cmd += ["--keep-minutes", str(KEEP_MINUTES)]
        log = open(tmp / "server.log", "w")  # noqa: SIM115 - open while the server runs
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_for(url, server, 300)
            files_before = _count_files(work, cache)
            results: list = []
            lock = threading.Lock()
            sessions = [
                LoadClient(url, i, images, volume, bad, tmp / "reference", results, lock) for i in range(clients)
            ]
            rss: dict[int, int] = {}

            def watch() -> None:  # resident memory when the 20th request has finished
                while len(results) < min(20, clients * requests):
                    time.sleep(0.05)
                rss[20] = _rss(server.pid)

            def drive(session: LoadClient) -> None:
                for k in range(requests):
                    if time.monotonic() - t_start > max_seconds:
                        return
                    session.request(k)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            t0 = time.perf_counter()
            threads = [threading.Thread(target=drive, args=(s,)) for s in sessions]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            watcher.join(10)
            rss["end"] = _rss(server.pid)
            alive = server.poll() is None
            latencies = sorted(r[1] for r in results)
            errors = [r for r in results if r[2]]
            print(
                f"\n{len(results)} requests from {clients} clients in {wall:.1f} s ({len(results) / wall:.2f}/s); "
                f"server still serving: {alive}"
            )
            kinds: dict[str, list[float]] = {}
            for kind, seconds, _ in results:
                kinds.setdefault(kind.split(":")[0], []).append(seconds)
            for kind, values in sorted(kinds.items()):
                print(
                    f"  {kind:7s} {len(values):4d}  p50 {statistics.median(values):6.2f} s  "
                    f"p95 {np.percentile(values, 95):6.2f} s"
                )
            print(f"latency: p50 {statistics.median(latencies):.2f} s, p95 {np.percentile(latencies, 95):.2f} s")
            refused = {}
            for kind, _, problem in results:
                if kind.startswith("bad:"):
                    refused.setdefault(kind[4:], [0, 0])[0 if problem is None else 1] += 1
            print(
                "bad files answered with their message: "
                + ", ".join(f"{k} {v[0]}/{sum(v)}" for k, v in refused.items())
            )
            print(
                f"masks compared with infer_sam.py's: {sum(s.compared for s in sessions)} "
                f"({sum(s.nonempty for s in sessions)} with detections), all equal unless listed below"
            )
            print(f"errors: {len(errors)}")
            for kind, _, problem in errors[:10]:
                print(f"  {kind}: {problem}")
            grew = rss["end"] / rss[20] - 1
            print(
                f"server RSS: {rss[20] / 2**20:.0f} MiB after 20 requests, {rss['end'] / 2**20:.0f} MiB after "
                f"{len(results)} ({grew:+.1%}; limit +10%)"
            )
            files_during = _count_files(work, cache)
            wait = KEEP_MINUTES * 60 * 1.5 + 5
            print(
                f"temporary files: {files_before} before, {files_during} after the load; waiting {wait:.0f} s "
                f"for --keep-minutes {KEEP_MINUTES} ...",
                flush=True,
            )
            time.sleep(wait)
            files_after = _count_files(work, cache)
            print(f"temporary files: {files_after} after they aged out (baseline {files_before})")
            if files_after > files_before:
                left = [p for folder in (work, cache) for p in folder.rglob("*") if p.is_file()]
                print(
                    "  still there, e.g.: "
                    + ", ".join(f"{p.relative_to(tmp)} ({p.stat().st_size} B)" for p in left[:8])
                )
            ok = alive and not errors and grew <= 0.10 and files_after <= files_before
            if not ok:
                print("server log (last lines):\n" + "".join((tmp / "server.log").read_text().splitlines(True)[-20:]))
            print("PASS" if ok else "FAIL")
            return 0 if ok else 1
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


if __name__ == "__main__":
    main()
