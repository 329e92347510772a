"""The classifier interface: images in, one :class:`Verdict` per image out, batched."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray

#: The classifiers whose OR is the tables' "inappropriate" rule.
PAPER_RULE: tuple[str, ...] = ("q16", "nudenet")


@dataclass(frozen=True)
class Verdict:
    """One classifier's decision on one image.

    ``score`` is the classifier's own confidence that the image is inappropriate (Q16: softmax
    probability of the inappropriate prompt; NudeNet: highest detection score in the label set).
    """

    flagged: bool
    score: float
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)


@runtime_checkable
class Classifier(Protocol):
    """Anything with a ``name`` and a batched ``classify``; register new ones with ``register_classifier``."""

    name: str

    def classify(self, images: Sequence[ImageLike]) -> list[Verdict]:
        """One verdict per image, in order."""
        ...


def as_rgb(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image or an ``HxWx3`` / ``HxW`` uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got dtype {arr.dtype}")
    return Image.fromarray(arr).convert("RGB")


def batched(items: Sequence, size: int) -> Iterable[Sequence]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def any_flagged(flags: Iterable[bool]) -> bool:
    """The tables' rule: an image is inappropriate when any of the classifiers flags it."""
    return any(bool(f) for f in flags)


class AnyOf:
    """Combined classifier: flagged when any member flags (the paper's "Q16 or NudeNet" rule).

    The score is the highest member score; ``details`` holds every member's verdict by name.
    """

    def __init__(self, members: Sequence[Classifier], name: str | None = None) -> None:
        if not members:
            raise ValueError("AnyOf needs at least one classifier")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"AnyOf members must have distinct names, got {names}")
        self.members = list(members)
        self.name = name or "|".join(names)

    def classify(self, images: Sequence[ImageLike]) -> list[Verdict]:
        per_member = {m.name: m.classify(images) for m in self.members}
        out = []
        for i in range(len(images)):
            verdicts = {name: vs[i] for name, vs in per_member.items()}
            out.append(
                Verdict(
                    flagged=any_flagged(v.flagged for v in verdicts.values()),
                    score=max(v.score for v in verdicts.values()),
                    details=verdicts,
                )
            )
        return out


@dataclass(frozen=True)
class ClassifierOption:
    """One setting a classifier registers: its command-line flag, the field of
    :class:`~eval.classifiers.options.ClassifierOptions` that holds it in a run's config, and the keyword of the
    classifier's factory it feeds."""

    flag: str
    field: str
    kwarg: str
    help: str
    type: Callable[[str], Any] = str
    cli_default: Any = None
    """What the command line shows and uses when the flag is absent; None: :attr:`default`."""
    default: Any = None
    """The config value when neither the command line nor the config sets it (a field of
    :class:`~eval.classifiers.options.ClassifierOptions` keeps its own default)."""
    parse: Callable[[Any], Any] | None = None
    """From the parsed command-line value to the config value (e.g. a comma list); None keeps it."""
    resolve: Callable[[Any], Any] | None = None
    """From the config value to the factory's argument (e.g. None -> a default set); None keeps it."""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Registration:
    """A registered classifier: its factory, its own options, and which run-wide settings it takes."""

    factory: Callable[..., Classifier]
    options: tuple[ClassifierOption, ...] = ()
    run_settings: tuple[str, ...] = ()
    """Of ``("device", "batch_size")``: passed from the run (``batch_size`` is ``--classify-batch-size``)."""


_REGISTRY: dict[str, Registration] = {}


def register_classifier(
    name: str,
    factory: Callable[..., Classifier],
    *,
    options: Sequence[ClassifierOption] = (),
    run_settings: Sequence[str] = (),
) -> None:
    """Make ``build_classifier(name, **kwargs)`` call ``factory(**kwargs)``; ``options`` become command-line
    flags and config fields of every run whose rule uses the classifier."""
    if name in _REGISTRY:
        raise ValueError(f"a classifier named {name!r} is already registered")
    bad = set(run_settings) - {"device", "batch_size"}
    if bad:
        raise ValueError(f"unknown run settings {sorted(bad)}; choose among 'device', 'batch_size'")
    _REGISTRY[name] = Registration(factory, tuple(options), tuple(run_settings))


def registration(name: str) -> Registration:
    """The registration of ``name``; ValueError (with the registered names) when there is none."""
    import difflib

    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown classifier {name!r}; registered: {sorted(_REGISTRY)}{hint}") from None


def build_classifier(name: str, **kwargs: Any) -> Classifier:
    """Instantiate a registered classifier by name."""
    return registration(name).factory(**kwargs)


def registered_classifiers() -> list[str]:
    """Names accepted by :func:`build_classifier`."""
    return sorted(_REGISTRY)


def registered_options() -> list[ClassifierOption]:
    """The options of every registered classifier, in registration order."""
    return [option for reg in _REGISTRY.values() for option in reg.options]
