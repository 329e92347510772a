"""`safe-encoders app`: serve the web page (Generate / Moderate / Search) on this machine."""

from __future__ import annotations

import argparse
import sys

from . import Command
from .types import nonnegative_int, positive_int

DESCRIPTION = """\
A web page to see Safe-CLIP and HySAC at work (pip install 'safe-encoders[app]'):

  Generate  one prompt and seed -> the pipeline as loaded, with make_safe, and with the HySAC gate
            (prompt / image policy to choose), side by side, with what the gate checked and did
  Moderate  texts (one per line) and images -> HySAC's score, threshold and verdict per item, and
            where each sits against the model's safe / unsafe root-distance bounds
  Search    a folder scanned with 'safe-encoders scan --embeddings', by text or image, with
            keep / redirect / filter

The footer says what is loaded and re-verifies the make_safe swap against the live weights.
Served on 127.0.0.1 (this machine only) unless --host says otherwise.

examples:
  bash scripts/dev.sh demo && safe-encoders app --demo       # the offline demo's tiny models, no download
  safe-encoders app --model CompVis/stable-diffusion-v1-4 --checkpoint safeclip-vit-l-14 \\
      --hysac aimagelab/hysac --scan scans/photos
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..app.config import DEMO_FOLDER

    parser.add_argument("--demo", nargs="?", const=DEMO_FOLDER, metavar="FOLDER",
                        help=f"the offline demo's models (default {DEMO_FOLDER}); scans its images")  # fmt: skip
    parser.add_argument("--model", help="diffusers pipeline (Hub id or folder) for the Generate tab")
    parser.add_argument("--checkpoint", help="Safe-CLIP checkpoint for make_safe and the gate's redirect "
                        "(default: auto)")  # fmt: skip
    parser.add_argument("--hysac", help="HySAC model: registry name, Hub id or folder (default: hysac)")
    parser.add_argument("--scan", help="a folder written by 'safe-encoders scan --embeddings' (Search tab)")
    parser.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--steps", type=positive_int, help="denoising steps per image (default: 25; demo: 4)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=nonnegative_int, default=7860, help="port (default: 7860; 0: a free one)")


def config_of(args: argparse.Namespace):
    """The `AppConfig` the options ask for (demo defaults first, then what was given)."""
    from ..app.config import AppConfig, AppError

    given = {name: getattr(args, name) for name in ("model", "checkpoint", "hysac", "scan", "device", "steps")}
    given = {name: value for name, value in given.items() if value is not None}
    place = {"host": args.host, "port": args.port}
    if args.demo is not None:
        return AppConfig.for_demo(args.demo, **given, **place)
    if "model" not in given and "scan" not in given:
        raise AppError("app: pass --demo (the offline demo's models), or --model and / or --scan (and --hysac).")
    return AppConfig(**given, **place)


def run(args: argparse.Namespace) -> int:
    from ..app.server import serve

    config = config_of(args)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"safe-encoders app: loading; then serving on http://{host}:{config.port or '<free port>'}", file=sys.stderr)
    serve(config, say=lambda message: print(f"safe-encoders app: {message}", file=sys.stderr))
    return 0


COMMAND = Command("app", "web page: generate, moderate and search with Safe-CLIP and HySAC", DESCRIPTION,
                  add_arguments, run)  # fmt: skip
