"""`safe-encoders verify`: are a saved pipeline's encoders trusted Safe-CLIP checkpoints? Read from the files only."""

from __future__ import annotations

import argparse

from . import Command

DESCRIPTION = """\
Check a saved diffusers pipeline, LLaVA model or CLIP encoder (a folder, or a Hub id already in the
local Hugging Face cache) without building the model: each encoder's safetensors files are streamed
and every tensor's digest is looked up in this machine's trust store (registry checkpoints pinned on
first download, checkpoints trusted with 'safe-encoders trust'). The swap record a saved model
carries in its config is not believed: anyone can write one.

Prints one row per encoder: the checkpoint it holds, what trusts it (registry / user), and
"verified" or the first difference.

Exit status: 0 when every encoder is verified and trusted, 1 when one is not, 2 on a usage error
(no such folder, not a pipeline).

examples:
  safe-encoders verify ./my-sd-pipeline
  safe-encoders verify someorg/sd-safe --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="PATH_OR_HUB_ID", help="a saved pipeline / LLaVA / CLIP encoder folder")
    parser.add_argument("--revision", help="Hub revision (default: the cached main)")
    parser.add_argument("--cache-dir", help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..trust.folder import describe, summary, to_json, verify_folder

    hub_kwargs = {key: value for key, value in (("revision", args.revision), ("cache_dir", args.cache_dir)) if value}
    results = verify_folder(args.target, **hub_kwargs)
    print(to_json(results) if args.json else describe(results))
    return 0 if summary(results)["verified"] else 1


COMMAND = Command("verify", "check a saved pipeline against the trust store", DESCRIPTION, add_arguments, run)
