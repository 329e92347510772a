"""After HySAC training: root-distance bounds from the validation set, and the export with
``HySAC.save_pretrained`` (merged towers, learned curvature / scales, bounds, tokenizer and processor)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from safe_encoders.hysac import HySACBounds, compute_bounds
from train.config import TrainConfig
from train.data import batch_to
from train.export import require_finite_export, training_metadata
from train.model import HySACTrainModel

GROUP_OF_EMBEDDING = {"S": "text_safe", "V": "image_safe", "U": "text_unsafe", "G": "image_unsafe"}
"""HySAC's group letters -> keys of the model's ``forward`` output."""


@torch.no_grad()
def embed_quadruplets(
    model: HySACTrainModel,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, Any]],
    batch_size: int = 128,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Points of S, U, V, G (``forward``'s keys) of every item of ``dataset``, in order, as float32 on the CPU.

    Batches go to ``device`` (default: the model's).
    """
    device = device or model.hysac.device
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            batch = batch_to(batch, device)
            for key, value in model(batch).items():
                parts.setdefault(key, []).append(value.float().cpu())
    finally:
        model.train(was_training)
    return {key: torch.cat(values) for key, values in parts.items()}


def bounds_from_embeddings(emb: dict[str, torch.Tensor], curvature: float | torch.Tensor) -> HySACBounds:
    """``compute_bounds`` over the root distances of the four groups (``S``, ``V``, ``U``, ``G``)."""
    from safe_encoders.hysac import lorentz

    return compute_bounds(
        {group: lorentz.root_distance(emb[key], curvature) for group, key in GROUP_OF_EMBEDDING.items()}
    )


def validation_bounds(
    model: HySACTrainModel,
    val_set: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, Any]],
    batch_size: int = 128,
    device: torch.device | str | None = None,
) -> HySACBounds:
    """Bounds of the trained model on the validation set (as the HySAC authors compute theirs)."""
    emb = embed_quadruplets(model, val_set, collate_fn, batch_size, device)
    return bounds_from_embeddings(emb, model.hysac.curvature.detach().cpu())


def export_hysac(
    model: HySACTrainModel,
    out_dir: str | Path,
    *,
    bounds: HySACBounds | None,
    config: TrainConfig | None = None,
    data_description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Merge the LoRA factors (in place: once, at the end), attach ``bounds`` and ``save_pretrained`` to ``out_dir``.

    Returns the folder (``hysac_config.json``, ``text_encoder.safetensors``, ``vision_encoder.safetensors``
    and the tokenizer / image processor when the model has them); ``HySAC.from_pretrained`` reads it back.
    """
    lora = model.lora
    hysac = model.merged_hysac()
    require_finite_export(hysac, "the merged HySAC model")
    hysac.bounds = bounds
    hysac.eval()
    info = training_metadata("hysac", lora, config=config, data_description=data_description, extra=metadata)
    return hysac.save_pretrained(out_dir, metadata=info)
