"""Validation of a training run: the loss and the retrieval recall of the method over a whole loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from eval.metrics import safe_clip_retrieval
from train.config import TrainConfig
from train.data import batch_to
from train.methods import References, method_of
from train.model import TwoTowerModel


@torch.no_grad()
def evaluate(
    model: TwoTowerModel,
    loader: DataLoader,
    references: References | None,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Validation loss and retrieval figures (``val_`` prefixed) over a whole loader.

    Retrieval ranks by the method's similarity (HySAC: minus the Lorentz distance; Safe-CLIP: cosine).
    """
    method = method_of(cfg)
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    loss_sum, count = 0.0, 0
    try:
        for batch in loader:
            batch = batch_to(batch, torch.device(device))
            emb = model(batch)
            loss, _ = method.loss(cfg, model, emb, batch, references)
            n = batch["index"].shape[0]
            loss_sum, count = loss_sum + loss.item() * n, count + n
            for key, value in emb.items():
                parts.setdefault(key, []).append(value.float().cpu())
    finally:
        model.train(was_training)
    emb = {k: torch.cat(v) for k, v in parts.items()}
    metrics = {"val_loss": loss_sum / max(count, 1)}
    similarity = method.similarity(model)
    retrieval = safe_clip_retrieval(
        emb["text_safe"], emb["image_safe"], emb["text_unsafe"], emb["image_unsafe"], similarity=similarity
    )
    metrics.update({f"val_{k}": v for k, v in retrieval.items()})
    return metrics


def validation_metric_names() -> list[str]:
    """The names of the figures :func:`evaluate` returns (what ``early_stopping_metric`` may name)."""
    probe = safe_clip_retrieval(*(torch.eye(2) for _ in range(4)))
    return ["val_loss", *(f"val_{k}" for k in probe)]
