"""The training methods as data: what the loop, the commands and the export need to know of each.

Each :class:`Method` says how to build its model (from the base encoders), its loss, whether it needs
the frozen reference embeddings, what to do after an optimizer step, how validation ranks retrieval
and how to export. ``train.loop`` and ``python -m train`` look the method up in :data:`METHODS` (by
``TrainConfig.method``) and never ask which one it is. Adding a method is adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train.config import TrainConfig
from train.model import ContrastiveClipModel, HySACTrainModel, SafeClipModel, TwoTowerModel

References = Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ValidationData:
    """The validation set a method's export may need (HySAC's bounds come from it)."""

    dataset: Any
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    batch_size: int


@dataclass(frozen=True)
class Method:
    """One training method; see the module docstring."""

    name: str
    title: str
    """How people write it (messages, tables)."""
    model_class: type[TwoTowerModel]
    build: Callable[[TrainConfig, Any, Any, Any, Any], TwoTowerModel]
    """``(cfg, text, vision, tokenizer, image_processor) -> model`` around the base encoders."""
    loss: Callable[[TrainConfig, TwoTowerModel, dict[str, torch.Tensor], dict[str, Any], References | None], Any]
    """``(cfg, model, embeddings, batch, references) -> (total, unweighted terms)``."""
    needs_references: bool
    """Whether the loss compares with the frozen model's embeddings (cached or live)."""
    export: Callable[[TwoTowerModel, Path, TrainConfig, ValidationData | None, str | None], str]
    """``(model, out, cfg, validation, data_description) -> a summary``; folds the adapters in (once, at the end)."""
    after_step: Callable[[TwoTowerModel], None] = lambda model: None
    """Called after every optimizer step (e.g. clamping learned scalars); default: nothing."""
    similarity: Callable[[TwoTowerModel], Similarity | None] = lambda model: None
    """What validation ranks retrieval by (None, the default: cosine)."""
    export_needs_validation: bool = False
    export_after_training: bool = False
    """Whether its training command exports right away (to ``OUTPUT_DIR/<name>_export`` by default)."""
    hub_upload: bool = False
    """Whether ``train export --push-to-hub`` can upload its export (with its model card)."""


# ---------------------------------------------------------------------------- Safe-CLIP


def _safe_clip_build(cfg: TrainConfig, text: Any, vision: Any, tokenizer: Any, image_processor: Any) -> SafeClipModel:
    return SafeClipModel(text, vision, cfg.lora)


def _safe_clip_loss(
    cfg: TrainConfig,
    model: SafeClipModel,
    emb: dict[str, torch.Tensor],
    batch: dict[str, Any],
    references: References | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from train.losses import safe_clip_loss

    assert references is not None
    ref_text, ref_image = references(batch)
    return safe_clip_loss(
        **emb,
        ref_text_safe=ref_text,
        ref_image_safe=ref_image,
        weights=cfg.loss.safe_clip_weights(),
        logit_scale=cfg.loss.logit_scale,
    )


def _safe_clip_export(
    model: SafeClipModel, out: Path, cfg: TrainConfig, validation: ValidationData | None, description: str | None
) -> str:
    from train.export import export_safe_clip

    paths = export_safe_clip(model, out, base_model=cfg.base_model, config=cfg, data_description=description)
    return "\n".join(f"{kind}: {path}" for kind, path in paths.items())


# ---------------------------------------------------------------------------- HySAC


def _hysac_build(cfg: TrainConfig, text: Any, vision: Any, tokenizer: Any, image_processor: Any) -> SafeClipModel:
    processors = {"tokenizer": tokenizer, "image_processor": image_processor}
    return HySACTrainModel(text, vision, cfg.lora, cfg.hysac, base_model=cfg.base_model, **processors)


def _hysac_loss(
    cfg: TrainConfig,
    model: SafeClipModel,
    emb: dict[str, torch.Tensor],
    batch: dict[str, Any],
    references: References | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    assert isinstance(model, HySACTrainModel)
    return model.loss(emb, cfg.hysac.hysac_weights())


def _hysac_after_step(model: SafeClipModel) -> None:
    assert isinstance(model, HySACTrainModel)
    model.clamp_parameters_()


def _hysac_similarity(model: SafeClipModel) -> Similarity:
    assert isinstance(model, HySACTrainModel)
    return model.similarity


def _hysac_export(
    model: SafeClipModel, out: Path, cfg: TrainConfig, validation: ValidationData | None, description: str | None
) -> str:
    from train.export import require_finite_export
    from train.hysac_export import export_hysac, validation_bounds

    assert isinstance(model, HySACTrainModel) and validation is not None
    require_finite_export(model, "the HySAC model")  # before its bounds are measured with it
    bounds = validation_bounds(model, validation.dataset, validation.collate_fn, validation.batch_size)
    folder = export_hysac(model, out, bounds=bounds, config=cfg, data_description=description)
    return (
        f"text / image thresholds {bounds.threshold('text'):.4f} / {bounds.threshold('image'):.4f}; "
        f"HySAC saved to {folder}"
    )


# ---------------------------------------------------------------------------- CLIP (contrastive pre-training)


def _clip_build(cfg: TrainConfig, text: Any, vision: Any, tokenizer: Any, image_processor: Any) -> TwoTowerModel:
    return ContrastiveClipModel(text, vision, tokenizer=tokenizer, image_processor=image_processor)


def _clip_loss(
    cfg: TrainConfig,
    model: TwoTowerModel,
    emb: dict[str, torch.Tensor],
    batch: dict[str, Any],
    references: References | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CLIP's InfoNCE over the safe and the unsafe pairs together (each text's own image is its positive)."""
    from train.losses import info_nce

    assert isinstance(model, ContrastiveClipModel)
    scale = model.logit_scale()
    text = torch.cat([emb["text_safe"], emb["text_unsafe"]])
    image = torch.cat([emb["image_safe"], emb["image_unsafe"]])
    return info_nce(text, image, scale), {"logit_scale": scale.detach()}


def _clip_export(
    model: TwoTowerModel, out: Path, cfg: TrainConfig, validation: ValidationData | None, description: str | None
) -> str:
    from train.export import export_clip_model

    assert isinstance(model, ContrastiveClipModel)
    return f"CLIPModel saved to {export_clip_model(model, out)}"


METHODS: dict[str, Method] = {
    "safe-clip": Method(
        name="safe-clip",
        title="Safe-CLIP",
        model_class=SafeClipModel,
        build=_safe_clip_build,
        loss=_safe_clip_loss,
        needs_references=True,
        export=_safe_clip_export,
        hub_upload=True,
    ),
    "hysac": Method(
        name="hysac",
        title="HySAC",
        model_class=HySACTrainModel,
        build=_hysac_build,
        loss=_hysac_loss,
        needs_references=False,
        after_step=_hysac_after_step,
        similarity=_hysac_similarity,
        export=_hysac_export,
        export_needs_validation=True,
        export_after_training=True,
    ),
    "clip": Method(
        name="clip",
        title="CLIP",
        model_class=ContrastiveClipModel,
        build=_clip_build,
        loss=_clip_loss,
        needs_references=False,
        export=_clip_export,
        export_after_training=True,
    ),
}


def method_of(cfg: TrainConfig) -> Method:
    """The method ``cfg.method`` names."""
    try:
        return METHODS[cfg.method]
    except KeyError:
        raise ValueError(f"method must be one of {list(METHODS)}, got {cfg.method!r}") from None


def check_model(method: Method, model: TwoTowerModel) -> None:
    """TypeError unless ``model`` is the method's model (most specific class: a HySAC model is no Safe-CLIP one)."""
    fits = [m for m in METHODS.values() if isinstance(model, m.model_class)]
    best = max(fits, key=lambda m: len(m.model_class.__mro__), default=None)
    if best is not method:
        trains = [f"{m.name} trains a {m.model_class.__module__}.{m.model_class.__name__}" for m in METHODS.values()]
        name = type(model).__name__
        raise TypeError(f"method {method.name!r} does not match the model ({name}); {'; '.join(trains)}")
