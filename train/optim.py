"""The optimizer of a run, from ``OptimSettings``: Adam (Safe-CLIP's release) or AdamW (HySAC's), with
weight decay on every trainable tensor except those the model lists in ``no_weight_decay()``
(HySAC: logit scale, feature scales and curvature, as released); and its learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from train.config import OptimSettings, TrainConfig

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
"""``optim.optimizer`` names. Adam's ``weight_decay`` is an L2 term in the gradient; AdamW's is decoupled."""


def build_optimizer(settings: OptimSettings, model: nn.Module) -> torch.optim.Optimizer:
    """``settings.optimizer`` over the trainable parameters of ``model``: one group with
    ``settings.weight_decay`` and, when the model names some, one without decay."""
    skip = set(getattr(model, "no_weight_decay", set)())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, settings.weight_decay), (no_decay, 0.0))
        if params
    ]
    return OPTIMIZERS[settings.optimizer](groups, lr=settings.lr, betas=tuple(settings.betas))


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of each step (``LambdaLR``): linear warm-up over ``optim.warmup_steps``, then
    constant or (``optim.schedule == "cosine"``) a cosine down to 0 at ``total_steps``."""
    warmup, schedule = cfg.optim.warmup_steps, cfg.optim.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor
