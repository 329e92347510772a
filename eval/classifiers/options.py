"""The classifier settings of a run, as a typed config, and the classifiers of its rule built from the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eval.classifiers.base import PAPER_RULE, registration
from eval.classifiers.nudenet import I2P_NUDITY_THRESHOLD
from eval.classifiers.q16 import DEFAULT_Q16_MODEL


@dataclass(kw_only=True)
class ClassifierOptions:
    """The rule's classifiers and their options: one field per registered :class:`ClassifierOption`, which
    ``eval.options.add_classifier_options`` defines on a command line, ``eval.options.classifier_options``
    reads back and :func:`classifiers_from_config` builds classifiers from."""

    q16_model: str = DEFAULT_Q16_MODEL
    q16_prompts: str | None = None
    nudenet_threshold: float = I2P_NUDITY_THRESHOLD
    nudenet_labels: list[str] | None = None
    """None: the I2P set (``I2P_NUDITY_LABELS``)."""
    classify_batch_size: int = 16
    rule: tuple[str, ...] = PAPER_RULE


def classifiers_from_config(cfg: ClassifierOptions, *, device: str | torch.device | None = None) -> list[Any]:
    """The classifiers named in ``cfg.rule`` (a T2IConfig, RegenConfig or plain ClassifierOptions), each given
    its registered options from ``cfg`` and the run settings it asked for (device, batch size)."""
    out = []
    for name in cfg.rule:
        reg = registration(name)
        kwargs = {o.kwarg: (o.resolve or _same)(getattr(cfg, o.field)) for o in reg.options}
        settings = {"device": device, "batch_size": cfg.classify_batch_size}
        kwargs.update({k: settings[k] for k in reg.run_settings})
        out.append(reg.factory(**kwargs))
    return out


def _same(value: Any) -> Any:
    return value
