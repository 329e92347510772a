"""Which candidate image a ViSU row keeps (``python -m train visu-images --keep``): the keep rules as data."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from eval.classifiers import any_flagged
from eval.store.results import Label


@dataclass(frozen=True)
class Candidate:
    """One labelled candidate image of a row."""

    index: int
    seed: int
    labels: Mapping[str, Label]
    rule: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        """Flagged by any classifier of the rule."""
        return any_flagged(self.labels[n].flagged for n in self.rule)

    @property
    def score(self) -> float:
        """The highest score among the rule's classifiers."""
        return max(self.labels[n].score for n in self.rule)


KeepRule = Callable[[Sequence[Candidate]], "int | None"]


def keep_first_flagged(candidates: Sequence[Candidate]) -> int | None:
    """The authors' rule: the first candidate (by seed order) that a classifier flags; none if none is."""
    return next((c.index for c in candidates if c.flagged), None)


def keep_most_unsafe(candidates: Sequence[Candidate]) -> int | None:
    """The flagged candidate with the highest classifier score (first on ties); none if none is flagged."""
    flagged = [c for c in candidates if c.flagged]
    return max(flagged, key=lambda c: (c.score, -c.index)).index if flagged else None


def keep_first_flagged_else_first(candidates: Sequence[Candidate]) -> int | None:
    """The first flagged candidate, else the first candidate (no row is left without an image)."""
    kept = keep_first_flagged(candidates)
    return kept if kept is not None else (candidates[0].index if candidates else None)


KEEP_RULES: dict[str, KeepRule] = {
    "first-flagged": keep_first_flagged,
    "most-unsafe": keep_most_unsafe,
    "first-flagged-else-first": keep_first_flagged_else_first,
}


def keep_rule(name: str) -> KeepRule:
    """The keep rule registered under ``name``."""
    try:
        return KEEP_RULES[name]
    except KeyError:
        raise ValueError(f"unknown keep rule {name!r}; one of {sorted(KEEP_RULES)}") from None
