"""Where an encoder's tensors come from: a Hub id, a local transformers folder, or one of our files.

Every source is opened lazily: the header says which tensors exist and their shapes, and only the
tensors that are asked for are read (`EncoderSource.read`). The pickle policy lives here and only
here: safetensors is preferred; a pickle weight file is read with `torch.load(weights_only=True)`
or refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .errors import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeFormatError,
)
from .format import (
    CONFIG_NOISE,
    PROJECTION,
    canonical_name,
    encoder_file_name,
    encoder_header_from_metadata,
    is_encoder_metadata,
    is_ignored,
    is_published_name,
    read_encoder_header,
    read_safetensors_header,
    safetensors_shapes,
)
from .registry import CHECKPOINTS, Checkpoint, EncoderFingerprint, EncoderKind, hub_spelling, lookup_checkpoint
from .streaming import CHUNK_BYTES, Span, check_weight, safetensors_spans, stream_span, stream_tensor

logger = logging.getLogger("safe_encoders")

CHECK_THREADS = min(4, os.cpu_count() or 1)  # threads checking source tensors (each holds one 8 MB slice)
HUB_KWARGS = frozenset({"revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".p")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Weight files of a transformers folder, in order of preference.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class EncoderSource:
    """The tensors of one encoder, under their published names, not yet read."""

    kind: EncoderKind
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    label: str
    identity: str
    base_model: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    expected_digests: dict[str, str] | None = None
    _locations: dict[str, tuple[Path, str]] = field(default_factory=dict, repr=False)
    # Pickle weight files already loaded (memory-mapped) while listing their tensors.
    _pickled: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _spans: dict[Path, dict[str, Span]] = field(default_factory=dict, repr=False)

    @cached_property
    def fingerprint(self) -> EncoderFingerprint:
        return EncoderFingerprint.from_config(self.config)

    @property
    def has_projection(self) -> bool:
        return PROJECTION[self.kind] in self.shapes

    @property
    def digest(self) -> str | None:
        """The content digest when the source is one of our files (None otherwise)."""
        return self.provenance.get("digest") if self.expected_digests is not None else None

    def read(self, names: Iterable[str], digests: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        """Read the named tensors on CPU, each checked (floating point, finite, our files' digests); their
        digests (`format.tensor_digest`) go into `digests` when given."""
        names = list(names)
        self._check_known(names)
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._locations[name][0], []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for path, file_names in by_file.items():
            if path.suffix == ".safetensors":
                with safe_open(path, framework="pt", device="cpu") as handle:
                    for name in file_names:
                        tensors[name] = handle.get_tensor(self._locations[name][1])
            else:
                state = self._pickled.get(path) or load_pickle_weights(path)
                for name in file_names:
                    tensors[name] = state[self._locations[name][1]]
        for name, tensor in tensors.items():
            digest = check_weight(self.label, name, tensor.dtype, tuple(tensor.shape), stream_tensor(tensor))
            self._check_digest(name, digest)
            if digests is not None:
                digests[name] = digest
        return tensors

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor `name` (nothing is read)."""
        path, key = self._locations[name]
        return self._span(path, key).dtype if path.suffix == ".safetensors" else self._pickled[path][key].dtype

    def chunks(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
        """Tensor `name` as flat slices in its stored dtype, each valid until the next is asked for."""
        path, key = self._locations[name]
        if path.suffix == ".safetensors":
            return stream_span(self._span(path, key), chunk_bytes)
        return stream_tensor(self._pickled[path][key], chunk_bytes)

    def validate(self, names: Iterable[str]) -> dict[str, str]:
        """Check the named tensors a slice at a time (floating point, finite, our files' digests), holding
        none of them whole; returns their digests (`format.tensor_digest`)."""
        names = list(names)
        self._check_known(names)

        def check(name: str) -> str:
            digest = check_weight(self.label, name, self.dtype(name), self.shapes[name], self.chunks(name))
            self._check_digest(name, digest)
            return digest

        for name in names:  # header-only work first, so that the threads share nothing they build
            self.dtype(name)
        # sha256, isfinite and file reads release the GIL: tensors are checked on a few threads, in order.
        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
            return dict(zip(names, pool.map(check, names), strict=True))

    def _check_known(self, names: list[str]) -> None:
        missing = [name for name in names if name not in self._locations]
        if missing:
            raise CorruptCheckpointError(f"{self.label} lacks tensors {missing[:5]} (of {len(missing)} missing).")

    def _check_digest(self, name: str, digest: str) -> None:
        if self.expected_digests is not None and digest != self.expected_digests.get(name):
            raise CorruptCheckpointError(
                f"{self.label}: tensor {name} does not match the digest recorded in the file; "
                "the file is corrupt or was modified. Download or export it again."
            )

    def _span(self, path: Path, key: str) -> Span:
        if path not in self._spans:
            self._spans[path] = safetensors_spans(path)
        return self._spans[path][key]


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


def resolve_source(source: Any, kind: EncoderKind, **hub_kwargs: Any) -> EncoderSource:
    """Open `source` for its `kind` encoder.

    `source` is one of: a registry name (see `list_checkpoints`) or `Checkpoint`; a Hub id
    (`org/name` or `hf-hub:org/name`); a local transformers folder (config.json + weights); one of
    our `.safetensors` files; or a folder written by `convert_checkpoint`.
    """
    check_hub_kwargs(hub_kwargs)
    parsed = parse_source_name(source, cache_dir=hub_kwargs.get("cache_dir"))
    if parsed.path is not None:
        return _local_source(parsed.path, kind)
    assert parsed.repo_id is not None
    base_model = parsed.entry.base_model if parsed.entry is not None else None
    return _hub_source(parsed.repo_id, kind, parsed.hub_kwargs(hub_kwargs), base_model)


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


# ----------------------------------------------------------------------------- local sources


def _local_source(path: Path, kind: EncoderKind) -> EncoderSource:
    if path.is_dir():
        ours = path / encoder_file_name(kind)
        if ours.is_file():
            return _encoder_file_source(ours, kind)
        if (path / "config.json").is_file():
            return _transformers_source(_local_fetch(path), kind, label=str(path), identity=_local_identity(path))
        raise CheckpointNotFoundError(
            f"Folder {path} holds neither {ours.name} (safe-encoders format) nor a transformers config.json. "
            "Pass the folder of a CLIP checkpoint, a file written by export_encoder, or a Hub id."
        )
    if path.suffix == ".safetensors":
        try:
            header = read_safetensors_header(path)
        except CorruptCheckpointError:
            header = None
        if header is not None and is_encoder_metadata(header[0]):
            return _encoder_file_source(path, kind, header)
        if (path.parent / "config.json").is_file():
            return _transformers_source(
                _local_fetch(path.parent),
                kind,
                label=str(path),
                identity=_local_identity(path.parent),
                weight_files=(path.name,),
            )
        read_encoder_header(path)  # raises with the precise reason (not ours / not safetensors)
    if path.suffix in PICKLE_SUFFIXES:
        if (path.parent / "config.json").is_file():
            return _transformers_source(
                _local_fetch(path.parent),
                kind,
                label=str(path),
                identity=_local_identity(path.parent),
                weight_files=(path.name,),
            )
        raise CheckpointNotFoundError(
            f"{path} is a pickle weight file with no config.json beside it, so its architecture is unknown. "
            "Pass the transformers folder that holds it (config.json + weights), ideally with model.safetensors."
        )
    raise CheckpointNotFoundError(
        f"{path} is not a .safetensors file or a checkpoint folder. Pass a folder, a .safetensors file or a Hub id."
    )


def _local_fetch(folder: Path) -> Callable[[str], Path | None]:
    def fetch(filename: str) -> Path | None:
        candidate = folder / filename
        return candidate if candidate.is_file() else None

    return fetch


def _local_identity(folder: Path) -> str:
    stamps = [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(folder.iterdir())
        if p.is_file() and (p.suffix in (".safetensors", ".json") or p.suffix in PICKLE_SUFFIXES)
    ]
    return f"dir:{folder.resolve()}|" + "|".join(stamps)


def _encoder_file_source(
    path: Path, kind: EncoderKind, header: tuple[dict[str, str], dict[str, tuple[int, ...]]] | None = None
) -> EncoderSource:
    """One of our files; `header` is its (metadata, shapes) when already read."""
    metadata, shapes = header if header is not None else read_safetensors_header(path)
    info = encoder_header_from_metadata(path, metadata)
    if info.kind != kind:
        raise ArchitectureMismatchError(
            f"{path} holds a {info.kind} encoder, but a {kind} encoder was asked for. "
            f"Use the {encoder_file_name(kind)} file written beside it."
        )
    missing = set(shapes) ^ set(info.tensor_digests)
    if missing:
        raise CorruptCheckpointError(f"{path}: tensors and digest list disagree on {sorted(missing)[:5]}.")
    return EncoderSource(
        kind=kind,
        config=info.config,
        shapes=shapes,
        label=str(path),
        identity=info.digest,
        base_model=info.base_model,
        provenance={**info.provenance, "digest": info.digest, "format_version": info.format_version},
        expected_digests=info.tensor_digests,
        _locations={name: (path, name) for name in shapes},
    )


# ------------------------------------------------------------------------------- Hub sources


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


def _hub_source(
    repo_id: str, kind: EncoderKind, hub_kwargs: Mapping[str, Any], base_model: str | None
) -> EncoderSource:
    label = f"{repo_id}@{hub_kwargs.get('revision') or 'main'}"

    def fetch(filename: str, required: bool = False) -> Path | None:
        return hub_file(repo_id, filename, required=required, **hub_kwargs)

    config_path = fetch("config.json")
    if config_path is None:
        ours = fetch(encoder_file_name(kind))
        if ours is not None:
            return _encoder_file_source(ours, kind)
        fetch("config.json", required=True)
    parts = config_path.parts  # .../snapshots/<commit>/[subfolder/]config.json names the exact revision used
    revision = hub_kwargs.get("revision") or "main"
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else revision
    source = _transformers_source(lambda name: fetch(name), kind, label=label, identity=f"hf:{repo_id}@{commit}")
    source.base_model = source.base_model or base_model
    source.provenance.update({"repo_id": repo_id, "revision": revision, "commit": commit})
    return source


# ------------------------------------------------------------------- transformers checkpoints


def _transformers_source(
    fetch: Callable[[str], Path | None],
    kind: EncoderKind,
    *,
    label: str,
    identity: str,
    weight_files: tuple[str, ...] = _WEIGHT_FILES,
) -> EncoderSource:
    """A transformers checkpoint: config.json and the first of `weight_files` found (default: the
    standard names, in order of preference; a caller that was given one weight file passes its name)."""
    config_path = fetch("config.json")
    assert config_path is not None  # callers check
    raw = read_json_object(config_path)
    config, belongs = encoder_config_from_dict(raw, kind, label=label)

    locations: dict[str, tuple[Path, str]] = {}
    pickled: dict[Path, dict[str, torch.Tensor]] = {}
    header_shapes: dict[Path, dict[str, tuple[int, ...]]] = {}  # safetensors headers, each read once
    for weights_name in weight_files:
        weights = fetch(weights_name)
        if weights is None:
            continue
        if weights_name.endswith(".index.json"):
            weight_map = read_json_object(weights).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CorruptCheckpointError(
                    f"{weights}: an index file needs a 'weight_map' object {{tensor name: shard file name}}; "
                    f"this one has {type(weight_map).__name__ if weight_map is not None else 'none'}. "
                    "Download the checkpoint again."
                )
            wanted = {key: shard for key, shard in weight_map.items() if belongs(key)}
            shard_paths = {}
            for shard in sorted(set(wanted.values())):
                _check_shard_name(weights, shard)
                shard_path = fetch(shard)
                if shard_path is None:
                    raise CorruptCheckpointError(f"{label}: shard {shard} named in {weights_name} is missing.")
                shard_paths[shard] = shard_path
            locations = {canonical_name(key, kind): (shard_paths[shard], key) for key, shard in wanted.items()}
        else:
            if weights.suffix != ".safetensors":
                pickled[weights] = load_pickle_weights(weights)
            else:
                header_shapes[weights] = _safetensors_shapes(weights)
            keys = list(pickled[weights]) if weights in pickled else list(header_shapes[weights])
            locations = {canonical_name(key, kind): (weights, key) for key in keys if belongs(key)}
        for path in {path for path, _ in locations.values() if path.suffix != ".safetensors"} - set(pickled):
            pickled[path] = load_pickle_weights(path)  # memory-mapped: only what is used gets paged in
        break
    else:
        raise CheckpointNotFoundError(
            f"{label} has a config.json but no weights ({', '.join(weight_files)}), "
            "or they are not in the local cache while offline."
        )
    if not locations:
        raise CorruptCheckpointError(f"{label}: the weights hold no {kind}-encoder tensors.")
    for path in {path for path, _ in locations.values()} - set(pickled) - set(header_shapes):
        header_shapes[path] = _safetensors_shapes(path)  # the shards of a sharded checkpoint
    shapes = {
        name: tuple(pickled[path][key].shape) if path in pickled else header_shapes[path][key]
        for name, (path, key) in locations.items()
    }
    return EncoderSource(
        kind=kind,
        config=config,
        shapes=shapes,
        label=label,
        identity=identity,
        base_model=raw.get("_name_or_path") or None,
        provenance={"kind": "transformers"},
        _locations=locations,
        _pickled=pickled,
    )


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; CorruptCheckpointError naming the file otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(
            f"{path} is not valid JSON ({error}); the file is truncated or damaged. Download it again."
        ) from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(
            f"{path} holds a JSON {type(value).__name__}, not an object; the file is damaged. Download it again."
        )
    return value


def _check_shard_name(index: Path, shard: str) -> None:
    """A shard named in an index must be a file beside it: no absolute path, no '..', no backslash."""
    parts = shard.replace("\\", "/").split("/")
    if not shard or shard.startswith(("/", "\\")) or ".." in parts or os.path.isabs(shard) or "\\" in shard:
        raise CorruptCheckpointError(
            f"{index} names a shard {shard!r} outside its folder; refusing to open it. "
            "An index may only name files of its own checkpoint."
        )


def encoder_config_from_dict(
    raw: Mapping[str, Any], kind: EncoderKind, *, label: str = "config"
) -> tuple[dict[str, Any], Callable[[str], bool]]:
    """The complete `kind` sub-config of a CLIP config dict, and a predicate selecting its tensors."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    model_type = raw.get("model_type")
    if model_type == "clip":
        full = CLIPConfig.from_dict(dict(raw))
        sub = (full.text_config if kind == "text" else full.vision_config).to_dict()
        # In CLIPModel the heads project to the top-level projection_dim.
        sub["projection_dim"] = full.projection_dim

        def belongs(key: str) -> bool:
            return is_published_name(key, kind) and not is_ignored(key)

    elif model_type in ("clip_text_model", "clip_vision_model"):
        own = "text" if model_type == "clip_text_model" else "vision"
        if own != kind:
            raise ArchitectureMismatchError(
                f"{label} is a CLIP {own} encoder (model_type {model_type}); a {kind} encoder was asked for."
            )
        sub = (CLIPTextConfig if own == "text" else CLIPVisionConfig).from_dict(dict(raw)).to_dict()

        def belongs(key: str) -> bool:
            return not is_ignored(key) and key != "logit_scale"

    else:
        raise ArchitectureMismatchError(
            f"{label} has model_type {model_type!r}; safe_encoders reads CLIP checkpoints "
            "(model_type clip, clip_text_model or clip_vision_model)."
        )
    for key in CONFIG_NOISE:
        sub.pop(key, None)
    sub["model_type"] = "clip_text_model" if kind == "text" else "clip_vision_model"
    return sub, belongs


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a safetensors weight file, from one opening of it."""
    with safe_open(path, framework="pt") as handle:
        return safetensors_shapes(handle)


def load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a pickle weight file without executing code (`weights_only=True`), or refuse it."""
    logger.warning(
        "%s is a pickle file; reading it with torch.load(weights_only=True), which refuses anything but "
        "tensors. Prefer a safetensors copy.",
        path,
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:  # files in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise _refuse_pickle(path, error) from error
    except Exception as error:
        raise _refuse_pickle(path, error) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeFormatError(f"{path} does not hold a plain state dict of tensors; refusing it.")
    return state


def _refuse_pickle(path: Path, error: Exception) -> UnsafeFormatError:
    # torch's own message suggests retrying with weights_only=False; we do not pass that advice on.
    return UnsafeFormatError(
        f"Refusing {path}: it is a pickle that torch.load(weights_only=True) cannot read "
        f"({type(error).__name__}), so loading it would mean executing arbitrary code. "
        "Use a safetensors version of the checkpoint."
    )
