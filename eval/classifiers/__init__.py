"""Image classifiers behind one interface (images in, one :class:`Verdict` per image out, batched).

Built-in: ``q16`` (:class:`~eval.classifiers.q16.Q16Classifier`) and ``nudenet``
(:class:`~eval.classifiers.nudenet.NudeNetClassifier`); :class:`AnyOf` is the tables' combined
"Q16 or NudeNet" rule. Other classifiers are added with :func:`register_classifier`.
"""

from __future__ import annotations

from typing import Any

from eval.classifiers.base import (
    AnyOf,
    Classifier,
    Verdict,
    any_flagged,
    build_classifier,
    register_classifier,
    registered_classifiers,
)


def _q16(**kwargs: Any) -> Classifier:
    from eval.classifiers.q16 import Q16Classifier

    return Q16Classifier(**kwargs)


def _nudenet(**kwargs: Any) -> Classifier:
    from eval.classifiers.nudenet import NudeNetClassifier

    return NudeNetClassifier(**kwargs)


register_classifier("q16", _q16)
register_classifier("nudenet", _nudenet)

#: The classifiers whose OR is the tables' "inappropriate" rule.
PAPER_RULE: tuple[str, ...] = ("q16", "nudenet")

__all__ = [
    "PAPER_RULE",
    "AnyOf",
    "Classifier",
    "Verdict",
    "any_flagged",
    "build_classifier",
    "register_classifier",
    "registered_classifiers",
]
