"""Where safe ends: statistics of root distances per group, and thresholds derived from them.

HySAC orders the four groups by distance from the root: `S` (safe text) < `V` (safe image) <
`U` (unsafe text) < `G` (unsafe image). The bounds hold, per group, statistics of the root
distances of a validation set. The authors' `hysac_bounds.json` has the same layout
(`{"S": {"up_95": ...}, "V": {...}, ...}`, `up_95` being the 95th percentile of the group's
distances); its other statistics are not documented, so any numeric entries are kept as they are.

Default unsafe thresholds (REFERENCE.md section 7): a text is unsafe when its root distance exceeds
the 95th percentile of safe-text distances (`S.up_95`), an image when it exceeds the 95th percentile
of safe-image distances (`V.up_95`). `calibrate_threshold` derives a threshold from a labelled set
instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import CorruptCheckpointError

Modality = Literal["text", "image"]
GROUPS = ("S", "V", "U", "G")
GROUP_NAMES = {"S": "safe text", "V": "safe image", "U": "unsafe text", "G": "unsafe image"}
# The safe group whose distribution bounds each modality.
SAFE_GROUP: dict[str, str] = {"text": "S", "image": "V"}


@dataclass(frozen=True)
class HySACBounds:
    """Root-distance statistics per group (`S`, `V`, `U`, `G`) and the statistic used as threshold."""

    stats: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    threshold_key: str = "up_95"

    def __post_init__(self) -> None:
        bad = non_finite_entries(self.stats)
        if bad:
            raise ValueError(f"HySACBounds: {', '.join(bad)} not finite numbers; every statistic must be finite.")
        if not isinstance(self.threshold_key, str):
            raise TypeError(f"HySACBounds: threshold_key must be a string, got {self.threshold_key!r}.")

    def threshold(self, modality: Modality) -> float:
        """The unsafe threshold of `modality` ("text" -> `S[threshold_key]`, "image" -> `V[threshold_key]`)."""
        if modality not in SAFE_GROUP:
            raise ValueError(f"modality must be 'text' or 'image', got {modality!r}.")
        group = SAFE_GROUP[modality]
        value = self.stats.get(group, {}).get(self.threshold_key)
        if value is None:
            raise KeyError(
                f"The HySAC bounds have no {group}.{self.threshold_key} ({GROUP_NAMES[group]}), so no {modality} "
                f"threshold can be derived. Groups present: {sorted(self.stats)}. Pass a threshold explicitly "
                "or calibrate one with calibrate_threshold."
            )
        return float(value)

    def has_threshold(self, modality: Modality) -> bool:
        return self.threshold_key in self.stats.get(SAFE_GROUP.get(modality, ""), {})

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The JSON layout (`{"S": {"up_95": ...}, ...}`), as in the authors' `hysac_bounds.json`."""
        return {group: dict(values) for group, values in self.stats.items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, threshold_key: str = "up_95", label: str = "bounds") -> HySACBounds:
        """Read the JSON layout. Notes beside the numbers are dropped, but a statistic of the wrong type (e.g.
        `"up_95": "0.5"`, any `up_*` / `low_*` / avg / mean / std / min / max / count entry, or any text that reads
        as a number) is refused, as is an empty or malformed file: a bound silently dropped would change the
        threshold the gate uses."""
        if not isinstance(raw, Mapping):
            raise CorruptCheckpointError(f"{label}: expected a JSON object of groups, got {type(raw).__name__}.")
        stats: dict[str, dict[str, float]] = {}
        for group, values in raw.items():
            if not isinstance(values, Mapping):
                continue
            wrong = {k: v for k, v in values.items() if _misread_statistic(str(k), v, threshold_key)}
            if wrong:
                raise CorruptCheckpointError(
                    f"{label}: {', '.join(f'{group}.{k} ({v!r}, {type(v).__name__})' for k, v in wrong.items())} "
                    "must be numbers; the bounds give the unsafe thresholds, so a value of the wrong type is refused."
                )
            numbers = {
                str(k): float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)
            }
            if numbers:
                stats[str(group)] = numbers
        bad = non_finite_entries(stats)
        if bad:
            raise CorruptCheckpointError(
                f"{label}: {', '.join(bad)} not finite numbers (NaN / Infinity); the bounds give the unsafe "
                "thresholds, so they must be finite. Recompute them (compute_bounds) or fix the file."
            )
        if not stats:
            raise CorruptCheckpointError(
                f"{label}: no group statistics found (expected e.g. {{'S': {{'up_95': 1.2}}, 'V': {{...}}}}); "
                f"top-level keys: {sorted(map(str, raw))[:8]}."
            )
        return cls(stats=stats, threshold_key=threshold_key)


STATISTICS = ("avg", "mean", "std", "min", "max", "count")


def _misread_statistic(key: str, value: Any, threshold_key: str) -> bool:
    """A statistic whose value is not a number (a note beside the statistics is not one)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return False
    if key == threshold_key or key in STATISTICS or key.startswith(("up_", "low_")) or isinstance(value, bool):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def non_finite_entries(stats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """`group.key (value) is` for each statistic that is not a finite real number."""
    bad = []
    for group, values in stats.items():
        if not isinstance(values, Mapping):
            bad.append(f"{group} ({values!r}) is")
            continue
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                bad.append(f"{group}.{key} ({value!r}) is")
    return bad


def compute_bounds(
    distances: Mapping[str, torch.Tensor], *, percentiles: tuple[float, ...] = (5.0, 95.0)
) -> HySACBounds:
    """Statistics of root distances per group, e.g. `{"S": d_safe_text, "V": d_safe_image, ...}`.

    Per group: `count`, `mean`, `std`, `min`, `max` and, for each percentile p, `low_p` (p < 50) or
    `up_p` (p >= 50), e.g. `low_5`, `up_95`. Use the validation split (as the authors do).
    """
    stats: dict[str, dict[str, float]] = {}
    for group, values in distances.items():
        values = torch.as_tensor(values).detach().double().flatten().cpu()
        if values.numel() == 0:
            raise ValueError(f"compute_bounds: group {group!r} has no distances.")
        if not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"compute_bounds: group {group!r} has {int((~torch.isfinite(values)).sum())} non-finite distance(s); "
                "bounds from them would make every threshold NaN."
            )
        entry = {
            "count": float(values.numel()),
            "mean": values.mean().item(),
            "std": values.std(unbiased=False).item(),
            "min": values.min().item(),
            "max": values.max().item(),
        }
        for p in percentiles:
            if not 0 <= p <= 100:
                raise ValueError(f"compute_bounds: percentile {p} is not in [0, 100].")
            name = f"{'up' if p >= 50 else 'low'}_{p:g}"
            entry[name] = torch.quantile(values, p / 100).item()
        stats[group] = entry
    return HySACBounds(stats=stats)


def calibrate_threshold(
    scores: torch.Tensor,
    unsafe: torch.Tensor,
    *,
    method: Literal["balanced_accuracy", "safe_percentile"] = "balanced_accuracy",
    percentile: float = 95.0,
) -> float:
    """A root-distance threshold (score > threshold means unsafe) from a labelled set.

    Methods:
        balanced_accuracy: the threshold maximising (TPR + TNR) / 2 (Youden's J); among equally good
            cuts the lowest is taken, placed halfway between the two neighbouring scores.
        safe_percentile: the `percentile`-th percentile of the safe items' scores (REFERENCE.md
            section 7, 95th by default); needs no unsafe example.
    """
    scores = torch.as_tensor(scores).detach().double().flatten().cpu()
    labels = torch.as_tensor(unsafe).detach().bool().flatten().cpu()
    if scores.shape != labels.shape:
        raise ValueError(f"calibrate_threshold: {scores.numel()} scores but {labels.numel()} labels.")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("calibrate_threshold: some scores are NaN or infinite; a threshold from them would be too.")
    n_unsafe = int(labels.sum())
    n_safe = labels.numel() - n_unsafe
    if method == "safe_percentile":
        if n_safe == 0:
            raise ValueError("calibrate_threshold(method='safe_percentile') needs at least one safe example.")
        return torch.quantile(scores[~labels], percentile / 100).item()
    if method != "balanced_accuracy":
        raise ValueError(
            f"calibrate_threshold: unknown method {method!r}; use 'balanced_accuracy' or 'safe_percentile'."
        )
    if n_safe == 0 or n_unsafe == 0:
        raise ValueError("calibrate_threshold(method='balanced_accuracy') needs both safe and unsafe examples.")
    order = torch.argsort(scores)
    sorted_scores, sorted_labels = scores[order], labels[order].double()
    # Cut after position i (i = -1 .. n-1): items 0..i predicted safe, the rest unsafe.
    unsafe_below = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_labels, 0)])
    safe_below = torch.arange(len(sorted_scores) + 1, dtype=torch.float64) - unsafe_below
    tnr = safe_below / n_safe
    tpr = (n_unsafe - unsafe_below) / n_unsafe
    balanced = (tnr + tpr) / 2
    # A cut between equal scores is impossible: only keep positions where the score changes.
    valid = torch.ones_like(balanced, dtype=torch.bool)
    valid[1:-1] = sorted_scores[1:] > sorted_scores[:-1]
    balanced = torch.where(valid, balanced, torch.full_like(balanced, -math.inf))
    cut = int(torch.argmax(balanced))
    if cut == 0:
        return sorted_scores[0].item() - 1.0
    if cut == len(sorted_scores):
        return sorted_scores[-1].item()
    return ((sorted_scores[cut - 1] + sorted_scores[cut]) / 2).item()
