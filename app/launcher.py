"""Start HMAR Studio in the browser: ``python launch.py`` or the ``hmar-studio`` command.

The only place that parses flags, configures logging, picks the device, loads the model and calls
``demo.launch()``. By default it serves the bundled demo model (``assets/hmar-emoji64``) on
http://127.0.0.1:7860 and opens a browser tab.

Examples::

    python launch.py                                   # bundled model, opens the browser
    python launch.py --checkpoint runs/my-model --no-browser --port 8000
    python launch.py --vae vae_ch160v4096z32.pth --hmar hmar-d16.pth --device cuda
    python launch.py --host 0.0.0.0 --auth-file logins.txt   # on your LAN, with a login

Sharing on a local network: ``--host 0.0.0.0`` serves on every interface, so always add a
login with ``--auth USER:PASSWORD`` (repeatable) or ``--auth-file FILE`` (one ``user:password``
per line, ``#`` comments; keeps passwords out of the shell history and ``ps``). Without a login
a non-local host is served with a warning; ``--share`` (a public gradio.live link) refuses to
start without one. A model that cannot be loaded stops the launch with one line and exit
code 1. Every request is bounded by ``app.request_limits`` (20 MB and 3 files per request,
malformed event calls refused with one log line), pictures above ``app.limits.MAX_PIXELS``
or more elongated than ``MAX_ASPECT_RATIO`` are refused while their header is read, before
they are decoded (a small PNG can declare a huge picture), and the per-user state of at most
``SESSION_CAPACITY`` sessions is kept (the oldest is forgotten first). docs/RELIABILITY.md
has the figures.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hmar_core import Pipeline

logger = logging.getLogger("launch")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "hmar-emoji64"
RANDOM_MODEL_WARNING = (
    "the demo model is not bundled yet (assets/hmar-emoji64 is missing), so this is a tiny "
    "RANDOM model: its pictures are noise. Pass --checkpoint FOLDER or --vae/--hmar to load a "
    "trained model."
)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Sessions whose per-user state the server keeps (oldest dropped first). Gradio's default,
#: 10000, never forgets API clients (they never close a tab) and costs 0.5-3 MiB per session.
SESSION_CAPACITY = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="HMAR Studio: generate and edit images in the browser.")
    model = parser.add_argument_group("model (default: the bundled demo model)")
    default_folder = os.path.relpath(DEFAULT_CHECKPOINT, REPO_ROOT)
    model.add_argument("--checkpoint", type=Path, default=None,
                       help=f"our model folder (default: {default_folder} if present)")
    model.add_argument("--vae", type=Path, default=None,
                       help="official VQVAE .pth (with --hmar)")
    model.add_argument("--hmar", type=Path, default=None,
                       help="official HMAR/VAR .pth (with --vae)")
    model.add_argument("--kind", choices=("hmar-stage1", "var"), default=None,
                       help="what a blocks.* --hmar file holds (when its bias does not say)")
    parser.add_argument("--device", default=None,
                        help='"cuda", "cpu", "cuda:1", ... (default: cuda if available, else cpu)')
    parser.add_argument("--engine", choices=("auto", "fast", "reference"), default="auto",
                        help="fast: half precision, fused kernels and CUDA graphs on GPUs; "
                             "reference: the float32 modules; auto (default): fast")
    parser.add_argument("--fp8", action="store_true",
                        help="fast engine with FP8 GEMMs for large batches (Hopper/Ada GPUs; "
                             "lossy; batch-1 edits keep half precision)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (0.0.0.0 exposes the app on your network)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: 7860, or the next free one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser tab")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs internet and a login: "
                             "--auth or --auth-file; off by default)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                        help="require this login (repeatable); use it with --host 0.0.0.0")
    parser.add_argument("--auth-file", type=Path, default=None, metavar="FILE",
                        help="logins, one user:password per line (# comments allowed)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = parser.parse_args(argv)
    if (args.vae is None) != (args.hmar is None):
        parser.error("--vae and --hmar go together")
    if args.checkpoint is not None and args.vae is not None:
        parser.error("give either --checkpoint or --vae/--hmar, not both")
    entries = list(args.auth)
    if args.auth_file is not None:
        try:
            lines = args.auth_file.read_text().splitlines()
        except OSError as err:
            parser.error(f"--auth-file: {err}")
        entries += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    args.logins = []
    for entry in entries:
        user, _, password = entry.partition(":")
        if not user.strip() or not password:
            parser.error("logins must look like USER:PASSWORD (non-empty user and password)")
        args.logins.append((user.strip(), password))
    if args.share and not args.logins:
        parser.error("--share publishes the app on a public gradio.live link: add a login with "
                     "--auth USER:PASSWORD or --auth-file FILE")
    return args


def launch_options(args: argparse.Namespace, max_file_size: str) -> dict[str, Any]:
    """The keyword arguments of ``demo.launch()`` for these flags (with the app's request
    limits, :mod:`app.request_limits`, as middleware)."""
    from app.request_limits import middleware
    if args.host not in LOCAL_HOSTS and not args.logins:
        logger.warning("serving on %s without a login: anyone who can reach this address can "
                       "use the app (add --auth USER:PASSWORD or --auth-file FILE)", args.host)
    return {
        "server_name": args.host,
        "server_port": args.port,
        "inbrowser": not args.no_browser,
        "share": args.share,
        "auth": args.logins or None,
        "max_file_size": max_file_size,
        "state_session_capacity": SESSION_CAPACITY,
        "show_error": True,
        "app_kwargs": {"middleware": middleware()},
        "footer_links": ["api"],
    }


def limit_image_decoding(max_pixels: int) -> None:
    """Make PIL refuse pictures above ``max_pixels`` from their header, before decoding.

    Gradio decodes uploads with PIL before any handler runs; PIL's own bomb check only refuses
    above 2 × ``Image.MAX_IMAGE_PIXELS`` (179 MP by default), so a ~100 KB PNG of 100 MP cost
    over 1 GiB of memory before the app refused it. Set for this process (an entry point).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels // 2  # PIL raises above twice this value


def pick_device(requested: str | None) -> torch.device:
    """The device: as requested, else CUDA when available, else the CPU.

    Raises:
        SystemExit: an unknown device name (one line, no traceback).
    """
    if requested:
        try:
            return torch.device(requested)
        except RuntimeError as err:
            raise SystemExit(f"launch.py: --device {requested!r}: {first_line(err)}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_pipeline(args: argparse.Namespace, device: torch.device) -> tuple[Pipeline, str | None]:
    """Load the model once; returns ``(pipeline, warning banner or None)``."""
    import hmar_core
    from hmar_core.engine import engine_with_fp8

    engine, options = engine_with_fp8(args.engine, args.fp8)
    if args.vae is not None:
        logger.info("loading official checkpoints %s + %s on %s", args.vae, args.hmar, device)
        return hmar_core.load_official(args.vae, args.hmar, kind=args.kind, device=device,
                                       engine=engine, engine_options=options), None
    folder = args.checkpoint
    if folder is None and (DEFAULT_CHECKPOINT / "config.json").is_file():
        folder = DEFAULT_CHECKPOINT
    if folder is not None:
        logger.info("loading %s on %s", folder, device)
        return hmar_core.Pipeline.from_pretrained(folder, device=device, engine=engine,
                                                  **options), None
    logger.warning("WARNING: %s", RANDOM_MODEL_WARNING)
    return (hmar_core.Pipeline.random(device=device, engine=engine, **options),
            RANDOM_MODEL_WARNING)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, load the model, build the UI and serve it until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = pick_device(args.device)

    import app

    limit_image_decoding(app.handlers.MAX_PIXELS)
    # Model work never runs in this long-lived thread (app.streaming: torch's thread pools).
    try:
        pipeline, warning = app.streaming.in_fresh_thread(lambda: load_pipeline(args, device))
    except (ValueError, OSError, RuntimeError, MemoryError) as err:
        # CheckpointError is a ValueError; RecursionError a RuntimeError. One line, exit 1.
        raise SystemExit(f"launch.py: cannot load the model: {first_line(err)}") from None
    logger.info("measuring the model's speed for the time estimate…")
    timing = app.streaming.in_fresh_thread(lambda: app.calibrate(pipeline))
    demo = app.build_demo(pipeline, warning=warning, timing=timing)
    demo.launch(**launch_options(args, app.MAX_FILE_SIZE))


if __name__ == "__main__":
    main()
