"""Hub sources: files of a Hub repository, downloaded or found in the local cache by huggingface_hub."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointNotFoundError
from ..format import encoder_file_name
from ..registry import EncoderKind
from .encoder_source import EncoderSource
from .local import encoder_file_source
from .transformers_checkpoint import transformers_source


def hub_file(repo_id: str, filename: str, *, required: bool, **hub_kwargs: Any) -> Path | None:
    """Download (or find in the cache) one file of a Hub repository.

    Returns None for a file the repository does not have (or that is not cached while offline)
    unless `required`, in which case `CheckpointNotFoundError` says what to do.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kwargs = dict(hub_kwargs)
    revision = kwargs.pop("revision", None) or "main"
    label = f"{repo_id}@{revision}"
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, **kwargs))
    except GatedRepoError as error:
        raise CheckpointNotFoundError(
            f"{label} is gated: accept its terms on the Hub and log in (`hf auth login`) or pass token=..."
        ) from error
    except RepositoryNotFoundError as error:
        raise CheckpointNotFoundError(
            f"Hub repository {repo_id!r} was not found (or is private: pass token=...). Check the id."
        ) from error
    except RevisionNotFoundError as error:
        raise CheckpointNotFoundError(f"{repo_id} has no revision {revision!r}.") from error
    except LocalEntryNotFoundError as error:
        if required:
            raise CheckpointNotFoundError(
                f"{label}: {filename} is not in the local Hugging Face cache and the Hub cannot be reached "
                "(offline: HF_HUB_OFFLINE=1 or no network). Download it once with network access "
                f"(`hf download {repo_id}`), point HF_HUB_CACHE / cache_dir= at a cache that has it, "
                "or pass a local folder."
            ) from error
        return None
    except EntryNotFoundError:
        if required:
            raise CheckpointNotFoundError(f"{label} has no {filename}; is it the right repository?") from None
        return None


def hub_source(repo_id: str, kind: EncoderKind, hub_kwargs: Mapping[str, Any], base_model: str | None) -> EncoderSource:
    """A Hub repository (or its `subfolder`): a transformers checkpoint (config + weights), else one of our files."""
    label = f"{repo_id}@{hub_kwargs.get('revision') or 'main'}"

    def fetch(filename: str, required: bool = False) -> Path | None:
        return hub_file(repo_id, filename, required=required, **hub_kwargs)

    config_path = fetch("config.json")
    if config_path is None:
        ours = fetch(encoder_file_name(kind))
        if ours is not None:
            source = encoder_file_source(ours, kind)
            source.provenance.update({"repo_id": repo_id, "commit": _snapshot_commit(ours, hub_kwargs)})
            return source
        fetch("config.json", required=True)
    revision = hub_kwargs.get("revision") or "main"
    commit = _snapshot_commit(config_path, hub_kwargs)
    source = transformers_source(lambda name: fetch(name), kind, label=label, identity=f"hf:{repo_id}@{commit}")
    source.base_model = source.base_model or base_model
    source.provenance.update({"repo_id": repo_id, "revision": revision, "commit": commit})
    source.provenance["config_file"] = str(config_path)  # pinned with the weights on first use
    return source


def _snapshot_commit(path: Path, hub_kwargs: Mapping[str, Any]) -> str:
    """The commit a cached file belongs to: .../snapshots/<commit>/[subfolder/]name names the exact revision."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else (hub_kwargs.get("revision") or "main")
