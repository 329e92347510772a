"""Image classifiers behind one interface (images in, one :class:`Verdict` per image out, batched).

Built-in: ``q16`` (:class:`~eval.classifiers.q16.Q16Classifier`) and ``nudenet``
(:class:`~eval.classifiers.nudenet.NudeNetClassifier`); :class:`AnyOf` is the tables' combined
"Q16 or NudeNet" rule. Other classifiers are added with :func:`register_classifier`, each with its own
options (:class:`ClassifierOption`): the command line (``eval.options.add_classifier_options``) and the classifiers
of a run (:func:`classifiers_from_config`) are built from the registry.
"""

from __future__ import annotations

from eval.classifiers.base import (
    PAPER_RULE,
    AnyOf,
    Classifier,
    ClassifierOption,
    Verdict,
    any_flagged,
    build_classifier,
    register_classifier,
    registered_classifiers,
    registered_options,
)
from eval.classifiers.nudenet import NUDENET_OPTIONS, NudeNetClassifier
from eval.classifiers.options import ClassifierOptions, classifiers_from_config
from eval.classifiers.q16 import Q16_OPTIONS, Q16Classifier

register_classifier("q16", Q16Classifier, options=Q16_OPTIONS, run_settings=("device", "batch_size"))
register_classifier("nudenet", NudeNetClassifier, options=NUDENET_OPTIONS, run_settings=("batch_size",))


__all__ = [
    "PAPER_RULE",
    "AnyOf",
    "Classifier",
    "ClassifierOption",
    "ClassifierOptions",
    "Verdict",
    "any_flagged",
    "build_classifier",
    "classifiers_from_config",
    "register_classifier",
    "registered_classifiers",
    "registered_options",
]
