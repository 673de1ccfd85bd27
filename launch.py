"""Start HMAR Studio in the browser: ``python launch.py``.

The only place that parses flags, configures logging, picks the device, loads the model and calls
``demo.launch()``. By default it serves the bundled demo model (``assets/hmar-emoji64``) on
http://127.0.0.1:7860 and opens a browser tab.

Examples::

    python launch.py                                   # bundled model, opens the browser
    python launch.py --checkpoint runs/my-model --no-browser --port 8000
    python launch.py --vae vae_ch160v4096z32.pth --hmar hmar-d16.pth --device cuda
"""

from __future__ import annotations

import os

# Before Gradio is imported: no usage analytics, no phoning home (also offline-friendly).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import torch  # noqa: E402

if TYPE_CHECKING:
    from hmar_core import Pipeline

logger = logging.getLogger("launch")

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "hmar-emoji64"
RANDOM_MODEL_WARNING = (
    "the demo model is not bundled yet (assets/hmar-emoji64 is missing), so this is a tiny "
    "RANDOM model: its pictures are noise. Pass --checkpoint FOLDER or --vae/--hmar to load a "
    "trained model."
)


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
    parser.add_argument("--device", default=None,
                        help='"cuda", "cpu", "cuda:1", ... (default: cuda if available, else cpu)')
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (0.0.0.0 exposes the app on your network)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: 7860, or the next free one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser tab")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs internet; off by default)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = parser.parse_args(argv)
    if (args.vae is None) != (args.hmar is None):
        parser.error("--vae and --hmar go together")
    if args.checkpoint is not None and args.vae is not None:
        parser.error("give either --checkpoint or --vae/--hmar, not both")
    return args


def pick_device(requested: str | None) -> torch.device:
    """The device: as requested, else CUDA when available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(args: argparse.Namespace, device: torch.device) -> tuple[Pipeline, str | None]:
    """Load the model once; returns ``(pipeline, warning banner or None)``."""
    import hmar_core

    if args.vae is not None:
        logger.info("loading official checkpoints %s + %s on %s", args.vae, args.hmar, device)
        return hmar_core.load_official(args.vae, args.hmar, device=device), None
    folder = args.checkpoint
    if folder is None and (DEFAULT_CHECKPOINT / "config.json").is_file():
        folder = DEFAULT_CHECKPOINT
    if folder is not None:
        logger.info("loading %s on %s", folder, device)
        return hmar_core.Pipeline.from_pretrained(folder, device=device), None
    logger.warning("WARNING: %s", RANDOM_MODEL_WARNING)
    return hmar_core.Pipeline.random().to(device), RANDOM_MODEL_WARNING


def main(argv: list[str] | None = None) -> None:
    """Parse flags, load the model, build the UI and serve it until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = pick_device(args.device)

    import app

    pipeline, warning = load_pipeline(args, device)
    logger.info("measuring the model's speed for the time estimate…")
    timing = app.calibrate(pipeline)
    demo = app.build_demo(pipeline, warning=warning, timing=timing)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        inbrowser=not args.no_browser,
        share=args.share,
        max_file_size=app.MAX_FILE_SIZE,
        show_error=True,
        footer_links=["api"],
    )


if __name__ == "__main__":
    main()
