"""Evaluation harness for safe-encoders (run from a checkout: ``python -m eval <command>``).

Sub-modules: ``prompts`` (prompt sets), ``classifiers`` (Q16, NudeNet and the combined rule),
``store`` (the resumable results store), ``t2i`` (the text-to-image runner) and ``report``
(tables, charts and image grids).
"""

from __future__ import annotations
