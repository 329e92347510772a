"""NaN and infinity guards of a run: a non-finite loss or weight stops the training, and an export refuses to
write non-finite weights. A NaN encoder is never a result: it would pass for a trained one in every file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from safe_encoders.errors import SafeEncodersError


class NonFiniteError(SafeEncodersError, FloatingPointError):
    """A loss or a weight holds NaN or an infinity (training stops; an export writes nothing)."""


def non_finite_names(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity (one device synchronisation for all of them)."""
    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    if not items:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all().cpu() for _, t in items]).tolist()
    return [name for (name, _), ok in zip(items, finite, strict=True) if not ok]


def describe(names: list[str], limit: int = 3) -> str:
    """``a, b, c and 4 more``: the first tensor names of a list, for a one-line error."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def require_finite(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], what: str, fix: str
) -> None:
    """Raise NonFiniteError, naming ``what``, the tensors holding a NaN or an infinity and the ``fix``."""
    bad = non_finite_names(tensors)
    if bad:
        raise NonFiniteError(f"{what}: {len(bad)} tensor(s) hold NaN or infinite values ({describe(bad)}); {fix}")
