"""The classifier settings of a run, as a typed config, and the classifiers of its rule built from the registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from eval.classifiers.base import PAPER_RULE, ClassifierOption, registration
from eval.classifiers.nudenet import I2P_NUDITY_THRESHOLD
from eval.classifiers.q16 import DEFAULT_Q16_MODEL


@dataclass(kw_only=True)
class ClassifierOptions:
    """The rule's classifiers and their options: one value per registered :class:`ClassifierOption`, which
    ``eval.options.add_classifier_options`` defines on a command line, ``eval.options.classifier_options``
    reads back and :func:`classifiers_from_config` builds classifiers from. The built-in classifiers' options
    are typed fields; those of any other registered classifier live in :attr:`classifier_settings` by field
    name (:meth:`from_values` sorts them)."""

    q16_model: str = DEFAULT_Q16_MODEL
    q16_prompts: str | None = None
    nudenet_threshold: float = I2P_NUDITY_THRESHOLD
    nudenet_labels: list[str] | None = None
    """None: the I2P set (``I2P_NUDITY_LABELS``)."""
    classify_batch_size: int = 16
    rule: tuple[str, ...] = PAPER_RULE
    classifier_settings: dict[str, Any] = field(default_factory=dict)
    """Options of registered classifiers that have no field here, by :attr:`ClassifierOption.field`."""

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def split(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (option fields, ``classify_batch_size``, ``rule``) as keyword arguments of this class (or
        of a config extending it): fields by name, the rest gathered into ``classifier_settings``."""
        names = cls.field_names()
        out = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        if extra:
            out["classifier_settings"] = {**out.get("classifier_settings", {}), **extra}
        return out

    def value(self, option: ClassifierOption) -> Any:
        """The config value of a registered option."""
        if option.field in self.field_names():
            return getattr(self, option.field)
        return self.classifier_settings.get(option.field, option.default)

    def classifier_values(self) -> dict[str, Any]:
        """Every classifier setting of this config as keyword arguments (another config's classifier part)."""
        names = ClassifierOptions.field_names()
        return {name: getattr(self, name) for name in names}


def classifiers_from_config(cfg: ClassifierOptions, *, device: str | torch.device | None = None) -> list[Any]:
    """The classifiers named in ``cfg.rule`` (a T2IConfig, RegenConfig or plain ClassifierOptions), each given
    its registered options from ``cfg`` and the run settings it asked for (device, batch size)."""
    out = []
    for name in cfg.rule:
        reg = registration(name)
        kwargs = {o.kwarg: (o.resolve or _same)(cfg.value(o)) for o in reg.options}
        settings = {"device": device, "batch_size": cfg.classify_batch_size}
        kwargs.update({k: settings[k] for k in reg.run_settings})
        out.append(reg.factory(**kwargs))
    return out


def _same(value: Any) -> Any:
    return value
