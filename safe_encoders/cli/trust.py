"""`safe-encoders trust`: add a checkpoint to this machine's trust store, or list what it trusts."""

from __future__ import annotations

import argparse

from . import Command

DESCRIPTION = """\
Trust a checkpoint on this machine: every tensor is read once (checked: floating point, finite) and
its digests are written to the trust store (one JSON file per encoder, in $SAFE_ENCODERS_TRUST_DIR,
default ~/.cache/safe-encoders/trust). From then on is_safe(..., verify=True) and 'safe-encoders
verify' accept an encoder holding exactly it. A folder written by 'train export' is trusted only
when you say so, even on the machine that wrote it.

Registry checkpoints need no command: they are pinned (repo id, commit, per-file sha256) the first
time make_safe downloads them.

examples:
  safe-encoders trust runs/export/text_encoder.safetensors
  safe-encoders trust ./my-safeclip-folder --kind text
  safe-encoders trust --list
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="PATH", nargs="?", help="a checkpoint file or folder, or a Hub id")
    parser.add_argument("--kind", choices=["text", "vision"], help="trust only this encoder of the checkpoint")
    parser.add_argument("--list", action="store_true", help="list the trusted checkpoints")


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgumentError
    from ..trust import TrustStore, trust_checkpoint

    if args.list == bool(args.checkpoint):
        raise InvalidArgumentError("pass a checkpoint to trust, or --list (not both).")
    if args.list:
        store = TrustStore()
        for entry in store.entries():
            print(f"{entry.kind:6}  {entry.trusted_by:8}  {entry.digest}  {entry.checkpoint}")
        print(f"({store.root})")
        return 0
    for entry in trust_checkpoint(args.checkpoint, kind=args.kind):
        print(f"trusted {entry.kind} encoder of {entry.checkpoint} ({entry.digest})")
    return 0


COMMAND = Command("trust", "trust a checkpoint on this machine (or --list)", DESCRIPTION, add_arguments, run)
