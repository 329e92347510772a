"""Our encoders in the interface clip_benchmark's metric functions expect: ``model.encode_text(tokens)``,
``model.encode_image(pixels)``, a ``tokenizer(list_of_texts) -> tensor`` and an image ``transform``.

clip_benchmark L2-normalises both embeddings and ranks by their dot product (cosine). A CLIP (original, Safe-CLIP,
our exports: anything ``safe_encoders.load_text_encoder`` / ``load_vision_encoder`` reads) goes through as it is.
HySAC ranks by the Lorentz inner product (minus the geodesic distance, a decreasing function of it):
:class:`LorentzAsCosine` lifts each point to a vector of one fixed Euclidean norm ``R`` whose dot products are the
Lorentz inner products (image ``[x, -x_t, p, 0]``, text ``[y, y_t, 0, q]``, ``p`` and ``q`` padding the norm to
``R``), so clip_benchmark's cosine ranks exactly as HySAC's similarity does. ``R`` must bound every point of the
evaluation, so it is measured by a first pass (:func:`lorentz_radius`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from eval.errors import EvalError


class ZeroShotError(EvalError):
    """A model or dataset of ``eval zero-shot`` cannot be used as asked."""


class PackedTokenizer:
    """``texts -> (N, 2, L)``: input ids and attention mask stacked, so that the one tensor clip_benchmark moves to
    the device carries the mask too (CLIP tokenizers pad with the end token: ids alone cannot tell padding)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


class ImageTransform:
    """PIL image -> ``pixel_values`` (C, H, W) of an image processor (what a torch dataset's ``transform`` is)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]


class TowerCLIP:
    """A CLIP as two towers with projection heads (``CLIPTextModelWithProjection`` / ``...VisionModel...``)."""

    def __init__(self, text: torch.nn.Module, vision: torch.nn.Module) -> None:
        self.text, self.vision = text.eval(), vision.eval()

    @torch.no_grad()
    def encode_text(self, packed: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=packed[:, 0], attention_mask=packed[:, 1]).text_embeds.float()

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixels.to(self.vision.dtype)).image_embeds.float()


class LorentzAsCosine:
    """A HySAC whose embeddings, L2-normalised and multiplied, give ``<x, y>_L / R^2`` (see the module docstring);
    in float64, so that dividing by ``R^2`` keeps the ranking's precision."""

    def __init__(self, model: Any, radius: float) -> None:
        self.model, self.radius = model, float(radius)

    def _lift(self, points: torch.Tensor, image: bool) -> torch.Tensor:
        from safe_encoders.hysac import lorentz

        x = points.double()
        t = lorentz.time_component(x, float(self.model.curvature)).unsqueeze(-1)
        base = torch.cat([x, -t if image else t], dim=-1)
        pad = (self.radius**2 - (base * base).sum(-1, keepdim=True)).clamp_min(0).sqrt()
        if bool((base * base).sum(-1).max() > self.radius**2 * (1 + 1e-9)):
            raise ZeroShotError("HySAC: a point lies outside the radius measured by the first pass (non-determinism?)")
        zero = torch.zeros_like(pad)
        return torch.cat([base, pad, zero] if image else [base, zero, pad], dim=-1)

    @torch.no_grad()
    def encode_text(self, packed: torch.Tensor) -> torch.Tensor:
        return self._lift(self.model.encode_text(packed[:, 0], packed[:, 1]), image=False)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._lift(self.model.encode_image(pixels), image=True)


@torch.no_grad()
def lorentz_radius(
    model: Any, tokenizer: Callable[[Sequence[str]], torch.Tensor], texts: Iterable[str], pixel_batches: Iterable
) -> float:
    """A Euclidean norm bounding every lifted point ``[x, x_t]`` of ``texts`` and of the image batches (with 1%
    head-room): the ``R`` of :class:`LorentzAsCosine`."""
    from safe_encoders.hysac import lorentz

    c = float(model.curvature)

    def largest(points: torch.Tensor) -> float:
        x = points.double()
        return float(((x * x).sum(-1) + lorentz.time_component(x, c) ** 2).max())

    texts = list(texts)
    best = 0.0
    for start in range(0, len(texts), 64):
        packed = tokenizer(texts[start : start + 64])
        best = max(best, largest(model.encode_text(packed[:, 0].to(model.device), packed[:, 1].to(model.device))))
    for pixels in pixel_batches:
        best = max(best, largest(model.encode_image(pixels.to(model.device))))
    return 1.01 * best**0.5


@dataclass
class ZeroShotModel:
    """A named model as clip_benchmark takes it; ``lorentz`` models need :func:`lorentz_radius` before use."""

    name: str
    model: Any
    tokenizer: PackedTokenizer
    transform: ImageTransform
    lorentz: bool = False

    @property
    def kind(self) -> str:
        return "hysac (Lorentz)" if self.lorentz else "clip (cosine)"


def load_clip(spec: str, processor: str | None, device: torch.device) -> ZeroShotModel:
    """``NAME=SOURCE`` or ``NAME=TEXT::VISION`` (as ``eval retrieval --model``), loaded with safe_encoders."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from eval.retrieval.embeddings import load_encoder, processor_source
    from eval.retrieval.encoder_pairs import EncoderPair
    from safe_encoders.sources import resolve_source

    pair = EncoderPair.parse(spec, processor)
    text, vision = load_encoder(pair.text, "text", device), load_encoder(pair.vision, "vision", device)
    text_proc = processor_source(pair, "text", resolve_source(pair.text, "text").base_model)
    vision_proc = processor_source(pair, "vision", resolve_source(pair.vision, "vision").base_model)
    tokenizer = AutoTokenizer.from_pretrained(text_proc)
    max_length = min(tokenizer.model_max_length, text.config.max_position_embeddings)
    return ZeroShotModel(
        pair.name,
        TowerCLIP(text, vision),
        PackedTokenizer(tokenizer, max_length),
        ImageTransform(AutoImageProcessor.from_pretrained(vision_proc)),
    )


def load_hysac_model(spec: str, device: torch.device) -> ZeroShotModel:
    """``NAME=FOLDER_OR_HUB_ID`` of a HySAC (with its tokenizer and image processor), via safe_encoders."""
    from safe_encoders.hysac import HySAC

    name, sep, source = spec.partition("=")
    if not sep or not name.strip() or not source.strip():
        raise ZeroShotError(f"--hysac {spec!r}: expected NAME=SOURCE")
    model = HySAC.from_pretrained(source.strip()).to(device).eval()
    if model.tokenizer is None or model.image_processor is None:
        raise ZeroShotError(f"--hysac {spec!r}: no tokenizer / image processor beside the model or its base model")
    max_length = min(model.tokenizer.model_max_length, model.text.config.max_position_embeddings)
    return ZeroShotModel(
        name.strip(),
        model,
        PackedTokenizer(model.tokenizer, max_length),
        ImageTransform(model.image_processor),
        lorentz=True,
    )
