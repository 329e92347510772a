"""HySAC (hyperbolic safety-aware CLIP): Lorentz-model operations, the model, an unsafe-content
classifier, safety traversal / retrieval, and a safety gate for diffusers pipelines and LLaVA.

from safe_encoders.hysac import HySAC, add_safety_gate, SafetyGate
model = HySAC.from_pretrained("aimagelab/hysac")          # or a folder written by model.save_pretrained
model.unsafe_score(texts=["a photo of a cat"]).text.unsafe

Dataset-scale moderation built on this model (`safe-encoders scan` / `search`) is `safe_encoders.moderation`.
"""

from . import lorentz
from .bounds import HySACBounds, calibrate_threshold, compute_bounds
from .classify import UnsafeScores, Verdicts, embed_images, embed_texts, score_embeddings, unsafe_score
from .gate import (
    GateHandle,
    GateReport,
    InputCheck,
    SafetyGate,
    UnsafeContentError,
    add_safety_gate,
    remove_safety_gate,
)
from .model import HySAC
from .traversal import (
    TRAVERSALS,
    Gallery,
    Retrieved,
    release_tau,
    retrieve,
    top_k,
    traverse,
    traverse_as_released,
    traverse_to_safe,
)

__all__ = [
    "TRAVERSALS",
    "Gallery",
    "GateHandle",
    "GateReport",
    "HySAC",
    "HySACBounds",
    "InputCheck",
    "Retrieved",
    "SafetyGate",
    "UnsafeContentError",
    "UnsafeScores",
    "Verdicts",
    "add_safety_gate",
    "calibrate_threshold",
    "compute_bounds",
    "embed_images",
    "embed_texts",
    "lorentz",
    "release_tau",
    "remove_safety_gate",
    "retrieve",
    "score_embeddings",
    "top_k",
    "traverse",
    "traverse_as_released",
    "traverse_to_safe",
    "unsafe_score",
]
