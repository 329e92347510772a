"""The models a retrieval evaluation compares: encoder pairs (``NAME=SOURCE`` or ``NAME=TEXT::VISION``) and the
per-backbone pairs of original CLIP and Safe-CLIP (``--backbones``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eval.errors import RetrievalError

#: The backbones of the per-backbone retrieval table (the supplementary's Table 10 as we read it: Table 2
#: repeated for each released Safe-CLIP backbone): label -> registry name. The original CLIP of each
#: row is the checkpoint's ``base_model``. No paper numbers are shipped for it; see ``eval/README.md``.
BACKBONES: dict[str, str] = {
    "ViT-L/14": "safeclip-vit-l-14",
    "ViT-L/14@336": "safeclip-vit-l-14-336",
    "ViT-H/14": "safeclip-vit-h-14",
}


@dataclass(frozen=True)
class EncoderPair:
    """A model to evaluate: its text and vision encoder sources and where its tokenizer / processor come from."""

    name: str
    text: str
    vision: str
    processor: str | None = None
    """Hub id or folder with the tokenizer and image processor; default: the sources' base model."""

    @classmethod
    def parse(cls, spec: str, processor: str | None = None) -> EncoderPair:
        """``NAME=SOURCE`` (both towers) or ``NAME=TEXT_SOURCE::VISION_SOURCE``."""
        name, sep, sources = spec.partition("=")
        if not sep or not name.strip() or not sources.strip():
            raise RetrievalError(
                f"model spec {spec!r}: expected NAME=SOURCE or NAME=TEXT_SOURCE::VISION_SOURCE, "
                "e.g. clip=openai/clip-vit-large-patch14 or safe=safeclip-vit-l-14"
            )
        text, _, vision = sources.partition("::")
        return cls(name.strip(), text.strip(), (vision or text).strip(), processor)


def backbone_pairs(labels: Sequence[str] | None = None) -> list[EncoderPair]:
    """``CLIP <backbone>`` and ``Safe-CLIP <backbone>`` pairs for the per-backbone table (default: all of them).

    Labels are those of :data:`BACKBONES` (case and ``@`` / ``-`` spelling tolerated, e.g. ``vit-l-14-336``).
    """
    from safe_encoders.registry import get_checkpoint

    def norm(label: str) -> str:
        return label.strip().lower().replace("@", "-").replace("/", "-")

    by_norm = {norm(k): k for k in BACKBONES}
    chosen = []
    for label in labels if labels is not None else list(BACKBONES):
        if norm(label) not in by_norm:
            raise RetrievalError(f"unknown backbone {label!r}; choose among {list(BACKBONES)} (or 'all')")
        chosen.append(by_norm[norm(label)])
    pairs = []
    for label in dict.fromkeys(chosen):
        checkpoint = get_checkpoint(BACKBONES[label])
        pairs.append(EncoderPair(f"CLIP {label}", checkpoint.base_model, checkpoint.base_model))
        pairs.append(EncoderPair(f"Safe-CLIP {label}", checkpoint.name, checkpoint.name))
    return pairs
