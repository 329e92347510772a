"""Trust anchored outside the pipeline: which checkpoints this machine trusts, and whether an encoder runs one.

- `store`: the trust store (one JSON per trusted encoder, in `trust_dir()`).
- `digests`: one streaming pass over a checkpoint gives every digest an entry holds.
- `checkpoints`: `trust_checkpoint` (the user says so) and `pin_registry_source` (trust on first use).
- `attestation`: what a live encoder's forward runs (module tree, hooks, forward overrides, tensors).
- `verify`: `verify_encoder`, the verdict on one live encoder.
- `folder`: `verify_folder`, the verdict on a saved pipeline / LLaVA folder, read without building it.
"""

from __future__ import annotations

from .checkpoints import pin_registry_source, trust_checkpoint
from .store import TRUST_DIR_ENV, TrustEntry, TrustStore, trust_dir
from .verify import EncoderVerdict, verify_encoder

__all__ = [
    "TRUST_DIR_ENV",
    "EncoderVerdict",
    "TrustEntry",
    "TrustStore",
    "pin_registry_source",
    "trust_checkpoint",
    "trust_dir",
    "verify_encoder",
]
