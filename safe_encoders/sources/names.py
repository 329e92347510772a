"""The one parser of checkpoint names (`parse_source_name`) and the check of Hub keyword arguments."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointNotFoundError
from ..registry import CHECKPOINTS, Checkpoint, hub_spelling, lookup_checkpoint

HUB_KWARGS = frozenset({"revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder"})
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class SourceName:
    """What a checkpoint name names, parsed once (`parse_source_name`): an existing local file or folder, or a
    Hub repo (with its registry entry when the name is registered)."""

    path: Path | None = None
    repo_id: str | None = None
    entry: Checkpoint | None = None

    def hub_kwargs(self, hub_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """`hub_kwargs` with a registered checkpoint's pinned revision (an explicit `revision` wins)."""
        return {"revision": self.entry.revision, **hub_kwargs} if self.entry is not None else dict(hub_kwargs)


def parse_source_name(
    source: Any, *, what: str = "Checkpoint", cache_dir: str | os.PathLike | None = None
) -> SourceName:
    """The one parser of checkpoint names: an existing local path, then a registry name or registered repo id
    (`lookup_checkpoint`, with or without `hf-hub:`), then a Hub id `org/name` (with or without `hf-hub:`).
    A registered Hub id keeps the user's spelling, or the spelling found in the cache (`registry.hub_spelling`;
    `cache_dir`, default `HF_HUB_CACHE`).

    CheckpointNotFoundError for anything else; TypeError for what is not a name, path or `Checkpoint`.
    """
    if isinstance(source, Checkpoint):
        return SourceName(repo_id=hub_spelling(source, source.name, cache_dir), entry=source)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"checkpoint must be a registry name, Hub id, folder or .safetensors path, not {type(source).__name__}."
        )
    path = Path(source).expanduser()
    if path.is_symlink():
        _check_symlink(path)
    if path.exists():
        return SourceName(path=path)
    entry = lookup_checkpoint(str(source))
    if entry is not None:
        return SourceName(repo_id=hub_spelling(entry, str(source), cache_dir), entry=entry)
    name = str(source).removeprefix("hf-hub:")
    if HUB_ID.match(name) and not name.endswith(".safetensors"):
        return SourceName(repo_id=name)
    raise CheckpointNotFoundError(
        f"{what} {name!r} is not an existing file or folder, not a registered name "
        f"({', '.join(CHECKPOINTS)}), and not a Hub id of the form 'org/name'. Check the path or the spelling."
    )


def check_hub_kwargs(hub_kwargs: Mapping[str, Any]) -> None:
    """TypeError for keyword arguments that are not Hub options (`HUB_KWARGS`) or have the wrong type."""
    unknown = set(hub_kwargs) - HUB_KWARGS
    if unknown:
        raise TypeError(f"Unknown keyword argument(s) {sorted(unknown)}; Hub options are {sorted(HUB_KWARGS)}.")
    for name, value in hub_kwargs.items():
        allowed, what = _HUB_KWARG_TYPES[name]
        if value is not None and not isinstance(value, allowed):
            raise TypeError(f"{name}={value!r} is a {type(value).__name__}; {name} must be {what}.")


_HUB_KWARG_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "revision": ((str,), "a string (a branch, tag or commit hash)"),
    "subfolder": ((str,), "a string (a folder inside the repository)"),
    "token": ((str, bool), "a string (a Hugging Face token) or a bool"),
    "cache_dir": ((str, os.PathLike), "a path"),
    "local_files_only": ((bool,), "True or False"),
    "force_download": ((bool,), "True or False"),
}


def _check_symlink(path: Path) -> None:
    """CheckpointNotFoundError for a symlink that loops or points nowhere (never taken for a Hub id)."""
    try:
        path.resolve(strict=True)
    except RuntimeError as error:  # Python < 3.13 reports loops this way
        raise CheckpointNotFoundError(f"{path} is a symlink loop ({error}); fix or remove the link.") from None
    except OSError as error:
        import errno

        what = "a symlink loop" if error.errno == errno.ELOOP else "a symlink to a missing file"
        raise CheckpointNotFoundError(f"{path} is {what} ({error.strerror}); fix or remove the link.") from None
