"""Moderation at dataset scale, built on the HySAC model: `scan` a collection for unsafe content
(Parquet verdicts, resumable) and `search` it safely (Lorentz nearest neighbours with keep / redirect /
filter). The `safe-encoders scan` / `search` commands are their front ends; `scale` runs a scan on Ray.

from safe_encoders.hysac import HySAC
from safe_encoders.moderation import InputSpec, ScanConfig, build_index, scan, search
model = HySAC.from_pretrained("aimagelab/hysac")
scan(model, InputSpec("photos/"), "scan_out", ScanConfig(embeddings=True))
search(model, build_index("scan_out"), texts=["a beach"], k=10, safety="redirect")
"""

from .collection import INPUT_KINDS, InputError, InputSpec, Item, read_items
from .scan import ScanConfig, ScanError, ScanOutput, ScanSummary, prepare_model, read_scan, scan
from .search import SAFETY_MODES, Hit, LorentzIndex, SearchError, build_index, search

__all__ = [
    "INPUT_KINDS",
    "SAFETY_MODES",
    "Hit",
    "InputError",
    "InputSpec",
    "Item",
    "LorentzIndex",
    "ScanConfig",
    "ScanError",
    "ScanOutput",
    "ScanSummary",
    "SearchError",
    "build_index",
    "prepare_model",
    "read_items",
    "read_scan",
    "scan",
    "search",
]
