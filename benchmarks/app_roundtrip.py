"""One inpaint through the served app (``gradio_client`` → Gradio → handler → engine) against
the same inpaint through ``pipe.inpaint``: Gradio's own overhead per request.

The app is built exactly as ``python launch.py`` builds it (``app.build_demo``) and served on
loopback in this process; the client sends the picture and one brush layer, as the browser
does, to the ``/inpaint`` endpoint, with the editor's default settings.

    python -m benchmarks.app_roundtrip                                   # bundled model, CPU
    python -m benchmarks.app_roundtrip --device cuda --random-depth 16   # 256 px d16, random
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.paths import ROOT, shown
from hmar_core import Pipeline

#: ``/inpaint`` after the editor value: class (none), strength, quality, cfg, top-k, top-p,
#: seed, variants, heatmap, area, grow, feather, only-masked, padding (docs/APP.md's example).
INPAINT_ARGS = (-1, 0, 2, 1.5, 900, 0.96, "42", 1, False, "Painted area", 1, 8, False, 32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pipeline(args: argparse.Namespace) -> Pipeline:
    if args.random_depth:
        from benchmarks.inference import build

        return build(args.random_depth, 256, args.engine if args.engine != "auto" else "fast",
                     torch.device(args.device), toy=False)
    return Pipeline.from_pretrained(args.checkpoint, device=args.device, engine=args.engine)


def _inputs(side: int, folder: Path) -> tuple[Path, Path, Image.Image, Image.Image]:
    from benchmarks.inference import edit_inputs

    image, mask = edit_inputs(side)
    layer = np.zeros((side, side, 4), np.uint8)
    layer[np.asarray(mask) > 0] = (255, 46, 136, 255)
    image_path, layer_path = folder / "picture.png", folder / "layer.png"
    image.save(image_path)
    Image.fromarray(layer).save(layer_path)
    return image_path, layer_path, image, mask


def run(args: argparse.Namespace) -> dict:
    from gradio_client import Client, handle_file

    import app

    # as launch.py: model work only in short-lived threads (app.streaming, torch's pools)
    fresh = app.streaming.in_fresh_thread
    pipe = fresh(lambda: _pipeline(args))
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(),
                            prevent_thread_lock=True, quiet=True,
                            max_file_size=app.MAX_FILE_SIZE)
    try:
        # download_files=False: the client would fetch every output file (the gallery and the
        # whole run history) through a new httpx client each, building an SSL context per file
        # (py-spy: ~45 ms a file on 2 CPU cores), a cost of gradio_client, not of the app; the
        # round trip ends when the server's last event arrives, as the browser's does.
        client = Client(url, verbose=False, download_files=False)
        with tempfile.TemporaryDirectory() as tmp:
            image_path, layer_path, image, mask = _inputs(pipe.image_size, Path(tmp))
            editor = {"background": handle_file(str(image_path)),
                      "layers": [handle_file(str(layer_path))], "composite": None}
            served, direct = [], []
            for rep in range(-2, args.reps):  # two warm-up rounds
                # a new seed each time: the app's edit cache must not serve a repeat
                seed = 42 + rep
                inpaint_args = (*INPAINT_ARGS[:6], str(seed), *INPAINT_ARGS[7:])
                tick = time.perf_counter()
                client.predict(editor, *inpaint_args, api_name="/inpaint")
                served.append((time.perf_counter() - tick) * 1000)
                tick = time.perf_counter()
                fresh(lambda seed=seed: pipe.inpaint(image, mask, seed=seed,
                                                     steps=INPAINT_ARGS[2]))
                direct.append((time.perf_counter() - tick) * 1000)
    finally:
        demo.close()
    served, direct = served[2:], direct[2:]
    report = {
        "device": torch.cuda.get_device_name() if pipe.device.type == "cuda" else "cpu",
        "engine": pipe.engine,
        "model": f"random d{args.random_depth}" if args.random_depth else shown(args.checkpoint),
        "served_ms": statistics.median(served), "direct_ms": statistics.median(direct),
        "served": served, "direct": direct,
    }
    report["gradio_overhead_ms"] = report["served_ms"] - report["direct_ms"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "assets" / "hmar-emoji64")
    parser.add_argument("--random-depth", type=int, default=0,
                        help="a random 256 px model of this depth instead of --checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engine", default="auto", choices=("auto", "fast", "reference"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
