"""A prompt set: a named, ordered list of :class:`Prompt` whose ids are unique and namespaced by the set
(``i2p:17``), so several sets can share one results store. The loaders are in :mod:`eval.data.prompts`."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.errors import PromptSetError


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt set.

    ``id`` is unique across sets (``"<set>:<id in the set>"``); ``seed`` and ``guidance`` are the
    ones published with the set when it has them, else ``None``.
    """

    id: str
    text: str
    prompt_set: str
    categories: tuple[str, ...] = ()
    seed: int | None = None
    guidance: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def base_seed(self) -> int:
        """The set's seed, or one derived deterministically from the prompt id."""
        if self.seed is not None:
            return self.seed
        digest = hashlib.sha256(self.id.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def image_seeds(self, n: int) -> list[int]:
        """Seeds of the ``n`` images drawn for this prompt: ``base_seed() + k`` for ``k < n``."""
        base = self.base_seed()
        return [(base + k) % 2**63 for k in range(n)]


@dataclass(frozen=True)
class PromptSet(Sequence[Prompt]):
    """A named, ordered list of prompts with unique ids."""

    name: str
    prompts: tuple[Prompt, ...]

    def __post_init__(self) -> None:
        dup = [pid for pid, n in Counter(p.id for p in self.prompts).items() if n > 1]
        if dup:
            raise PromptSetError(f"prompt set {self.name!r} has duplicate prompt ids, e.g. {dup[:3]}")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return PromptSet(self.name, self.prompts[index])
        return self.prompts[index]

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def category_counts(self) -> dict[str, int]:
        """How many prompts list each category (a prompt with several counts in each)."""
        counts: Counter[str] = Counter()
        for p in self.prompts:
            counts.update(set(p.categories))
        return dict(counts)

    def limit(self, n: int | None) -> PromptSet:
        """The first ``n`` prompts (all of them when ``n`` is None)."""
        return self if n is None else PromptSet(self.name, self.prompts[:n])
