"""Where HySAC checkpoints come from (a local folder or the Hub) and our own export format.

Our export (`HySAC.save_pretrained`) is a folder with:

- `text_encoder.safetensors`, `vision_encoder.safetensors`: the merged towers, written by
  `safe_encoders.export_encoder` (our encoder format: published tensor names, config, digests);
- `hysac_config.json`: `{"format": "safe_encoders.hysac", "format_version": 1, "library_version",
  "base_model", "log_curvature", "curvature", "curvature_range", "log_text_alpha", "log_image_alpha",
  "logit_scale" (log), "bounds" ({"S": {...}, ...} or null), "encoders": {"text": {"file", "digest"},
  "vision": {...}}, "metadata": {...}}`; the digests tie the JSON to the two files;
- the tokenizer and image processor files when the model had them.

The authors' release is `hysac_model.pth` + `hysac_bounds.json` (see `release`).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..atomic import atomic_folder, atomic_write_text
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedModelError
from ..format import encoder_file_name
from ..registry import CHECKPOINTS
from ..sources import resolve_source
from ..sources.hub import hub_file
from ..sources.names import HUB_ID, check_hub_kwargs, parse_source_name
from ..sources.pickles import load_pickle_weights
from ..sources.transformers_checkpoint import encoder_config_from_dict
from .bounds import HySACBounds
from .release import build_tower, check_release, parse_release_state, read_bounds_file

if TYPE_CHECKING:
    from .model import HySAC

CONFIG_NAME = "hysac_config.json"
RELEASE_WEIGHTS = "hysac_model.pth"
RELEASE_BOUNDS = "hysac_bounds.json"
FORMAT = "safe_encoders.hysac"
FORMAT_VERSION = 1
ENCODER_KINDS = ("text", "vision")
# The CLIP the authors' release was trained from, used when none is given.
DEFAULT_BASE_MODEL = CHECKPOINTS["hysac"].base_model


@dataclass(frozen=True)
class LocatedCheckpoint:
    """The files of one HySAC checkpoint, on disk."""

    layout: Literal["export", "release"]
    label: str
    files: dict[str, Path]
    # Where a tokenizer / image processor may live beside the weights (folder or Hub id) and how to fetch it.
    processor_source: str | None = None
    processor_kwargs: dict[str, Any] = field(default_factory=dict)


# Said whenever a HySAC model cannot be found: a user who mistyped a name learns what would work.
WHERE_HYSAC_MODELS_COME_FROM = (
    "HySAC models come from the Hub id 'aimagelab/HySAC' (the authors' release: downloaded once, then read from "
    "the Hugging Face cache), a local folder written by HySAC.save_pretrained or `python -m train hysac`, or "
    "the offline demo's export (`python -m train demo --out out/demo` writes out/demo/hysac_export)."
)


def locate(source: str | os.PathLike, hub_kwargs: dict[str, Any]) -> LocatedCheckpoint:
    """Find the files of `source`: a folder, a file inside one, the registry name "hysac" or a Hub id.

    Offline (``HF_HUB_OFFLINE`` or a Hub that does not answer a connection at once, `hub_reachable`) only the
    local Hugging Face cache is read: a miss is reported at once instead of after the Hub client's retries.
    """
    check_hub_kwargs(hub_kwargs)
    try:
        parsed = parse_source_name(source, what="HySAC checkpoint", cache_dir=hub_kwargs.get("cache_dir"))
    except CheckpointNotFoundError:
        raise CheckpointNotFoundError(
            f"HySAC model {str(source)!r} is not an existing file or folder, nor a Hub id of the form 'org/name'. "
            f"{WHERE_HYSAC_MODELS_COME_FROM}"
        ) from None
    if parsed.entry is not None and parsed.entry.name != "hysac":
        raise CheckpointNotFoundError(
            f"{str(source)!r} names a Safe-CLIP encoder checkpoint, not a HySAC model (load it with make_safe or "
            f"load_text_encoder). {WHERE_HYSAC_MODELS_COME_FROM}"
        )
    if parsed.path is not None:
        path = parsed.path
        folder = path if path.is_dir() else path.parent
        if path.is_file() and path.name not in (CONFIG_NAME, RELEASE_WEIGHTS) and path.suffix != ".pth":
            raise CheckpointNotFoundError(
                f"{path} is neither {CONFIG_NAME} (our HySAC export) nor a .pth release file. Pass the folder."
            )
        if (folder / CONFIG_NAME).is_file() and not (path.is_file() and path.suffix == ".pth"):
            files = {CONFIG_NAME: folder / CONFIG_NAME, **{k: folder / encoder_file_name(k) for k in ENCODER_KINDS}}
            return LocatedCheckpoint("export", str(folder), files, processor_source=str(folder))
        weights = path if path.is_file() else folder / RELEASE_WEIGHTS
        if weights.is_file():
            files = {RELEASE_WEIGHTS: weights}
            if (folder / RELEASE_BOUNDS).is_file():
                files[RELEASE_BOUNDS] = folder / RELEASE_BOUNDS
            return LocatedCheckpoint("release", str(weights), files, processor_source=str(folder))
        raise CheckpointNotFoundError(
            f"Folder {folder} holds neither {CONFIG_NAME} (our HySAC export, see HySAC.save_pretrained) nor "
            f"{RELEASE_WEIGHTS} (the authors' release). {WHERE_HYSAC_MODELS_COME_FROM}"
        )
    repo_id = parsed.repo_id
    assert repo_id is not None
    kwargs = parsed.hub_kwargs(hub_kwargs)
    if not kwargs.get("local_files_only") and not hub_reachable():
        kwargs["local_files_only"] = True  # the cache alone: no retries against a Hub that cannot answer
    try:
        return _locate_on_hub(repo_id, kwargs)
    except CheckpointNotFoundError as error:
        raise CheckpointNotFoundError(f"{error} {WHERE_HYSAC_MODELS_COME_FROM}") from error


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when the Hub cannot be used: ``HF_HUB_OFFLINE`` is set, or a TCP connection to the endpoint's host
    fails within ``timeout`` seconds. A proxy in the environment is trusted (True): only the Hub client can use it.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        import socket

        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _locate_on_hub(repo_id: str, kwargs: dict[str, Any]) -> LocatedCheckpoint:
    label = f"{repo_id}@{kwargs.get('revision') or 'main'}"
    config = hub_file(repo_id, CONFIG_NAME, required=False, **kwargs)
    if config is not None:
        files = {CONFIG_NAME: config}
        for kind in ENCODER_KINDS:
            files[kind] = hub_file(repo_id, encoder_file_name(kind), required=True, **kwargs)  # type: ignore[assignment]
        return LocatedCheckpoint("export", label, files, processor_source=repo_id, processor_kwargs=kwargs)
    weights = hub_file(repo_id, RELEASE_WEIGHTS, required=True, **kwargs)
    assert weights is not None
    files = {RELEASE_WEIGHTS: weights}
    bounds = hub_file(repo_id, RELEASE_BOUNDS, required=False, **kwargs)
    if bounds is not None:
        files[RELEASE_BOUNDS] = bounds
    return LocatedCheckpoint("release", label, files, processor_source=repo_id, processor_kwargs=kwargs)


# ------------------------------------------------------------------------------- loading


def load_hysac(
    cls: type[HySAC],
    source: str | os.PathLike,
    *,
    base_model: str | None,
    lora_alpha: float,
    torch_dtype: torch.dtype | None,
    load_processors: bool,
    hub_kwargs: dict[str, Any],
) -> HySAC:
    """See `HySAC.from_pretrained`."""
    located = locate(source, hub_kwargs)
    base_kwargs = {k: v for k, v in hub_kwargs.items() if k not in ("revision", "subfolder")}
    if located.processor_kwargs.get("local_files_only"):  # offline (see locate): the base model from the cache too
        base_kwargs["local_files_only"] = True
    if located.layout == "export":
        model = _load_export(cls, located)
        base_model = base_model or model.base_model
    else:
        base_model = base_model or DEFAULT_BASE_MODEL
        model = _load_release(cls, located, base_model=base_model, lora_alpha=lora_alpha, base_kwargs=base_kwargs)
    _check_scalars(model, located.label)
    if load_processors:
        candidates = [(located.processor_source, located.processor_kwargs)]
        if base_model:
            candidates.append((base_model, base_kwargs))
        model.tokenizer, model.image_processor = _load_processors(candidates)
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _load_export(cls: type[HySAC], located: LocatedCheckpoint) -> HySAC:
    from ..loading import load_text_encoder, load_vision_encoder
    from ..swap import installed_record

    path = located.files[CONFIG_NAME]
    config = read_config(path)
    towers = {}
    for kind, loader in (("text", load_text_encoder), ("vision", load_vision_encoder)):
        file = located.files[kind]
        if not file.is_file():
            raise CheckpointNotFoundError(f"{located.label}: {file.name} is missing beside {CONFIG_NAME}.")
        tower = loader(file, with_projection=True)
        recorded = config["encoders"].get(kind, {}).get("digest")
        actual = (installed_record(tower) or {}).get("digest")
        if recorded != actual:
            raise CorruptCheckpointError(
                f"{located.label}: {file.name} (digest {actual}) is not the file {CONFIG_NAME} was written with "
                f"({recorded}). Export the model again."
            )
        towers[kind] = tower
    bounds = HySACBounds.from_dict(config["bounds"], label=f"{path} (bounds)") if config.get("bounds") else None
    try:
        model = cls(
            towers["text"],
            towers["vision"],
            curvature_range=tuple(config["curvature_range"]),  # type: ignore[arg-type]
            bounds=bounds,
            base_model=config.get("base_model"),
        )
    except (TypeError, ValueError) as error:
        raise CorruptCheckpointError(f"{path}: curvature_range {config['curvature_range']} ({error}).") from error
    _set_scalars(model, {name: torch.tensor(config[name]) for name in _CONFIG_SCALARS})
    return model


_CONFIG_SCALARS = ("log_curvature", "log_text_alpha", "log_image_alpha", "logit_scale")


def read_config(path: Path) -> dict[str, Any]:
    """`hysac_config.json`, checked: a JSON object of our format, a readable version, finite numbers."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(f"{path} is not a readable JSON file ({error}).") from error
    if not isinstance(config, dict):
        raise CorruptCheckpointError(f"{path}: expected a JSON object, got a {type(config).__name__}.")
    if config.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not a HySAC config (format {config.get('format')!r}, not {FORMAT!r}).")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptCheckpointError(f"{path}: format_version must be a whole number >= 1; got {version!r}.")
    if version > FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{path} uses HySAC format version {version}; this library reads up to {FORMAT_VERSION}. "
            "Upgrade safe-encoders."
        )
    for name in _CONFIG_SCALARS:
        _finite(config.get(name), path, name)
    bounds = config.get("curvature_range")
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise CorruptCheckpointError(f"{path}: curvature_range must be [low, high]; got {bounds!r}.")
    for i, value in enumerate(bounds):
        if _finite(value, path, f"curvature_range[{i}]") <= 0:
            raise CorruptCheckpointError(f"{path}: curvature_range[{i}] must be > 0; got {value!r}.")
    if not isinstance(config.get("encoders"), dict):
        raise CorruptCheckpointError(f"{path}: encoders must be an object of digests; got {config.get('encoders')!r}.")
    if config.get("bounds") is not None and not isinstance(config["bounds"], dict):
        raise CorruptCheckpointError(f"{path}: bounds must be an object of groups or null; got {config['bounds']!r}.")
    return config


def _finite(value: Any, path: Path, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CorruptCheckpointError(f"{path}: {field} must be a finite number; got {value!r}.")
    return float(value)


def _load_release(
    cls: type[HySAC], located: LocatedCheckpoint, *, base_model: str, lora_alpha: float, base_kwargs: dict[str, Any]
) -> HySAC:
    weights = located.files[RELEASE_WEIGHTS]
    check_archive(weights)
    state = load_pickle_weights(weights)  # torch.load(weights_only=True), or UnsafeFormatError
    contents = parse_release_state(state)
    check_release(contents, located.label)
    raw_config = _base_config(base_model, base_kwargs)
    towers = {}
    for kind in ("text", "vision"):
        config, _ = encoder_config_from_dict(raw_config, kind, label=base_model)  # type: ignore[arg-type]

        def base_weights(names: list[str], kind: str = kind) -> dict[str, torch.Tensor]:
            return resolve_source(base_model, kind, **base_kwargs).read(names)  # type: ignore[arg-type]

        towers[kind] = build_tower(
            kind,  # type: ignore[arg-type]
            config,
            contents,
            base_weights=base_weights,
            lora_alpha=lora_alpha,
            label=located.label,
        )
    model = cls(
        towers["text"],
        towers["vision"],
        bounds=read_bounds_file(located.files.get(RELEASE_BOUNDS)),
        base_model=base_model,
    )
    _set_scalars(model, contents.scalars)
    return model


def _check_scalars(model: HySAC, label: str) -> None:
    """The training clamps hold for the loaded scalars (out-of-range ones clamped with a warning); non-finite
    ones are refused."""
    try:
        model.clamp_parameters_(label=label)
    except ValueError as error:
        raise CorruptCheckpointError(str(error)) from error


def check_archive(path: Path) -> None:
    """Refuse an empty, truncated or damaged torch zip file (torch reads a damaged member without complaint)."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise CorruptCheckpointError(f"{path} is empty.")
    if head != b"PK\x03\x04":
        return  # torch's legacy (pre-1.6) format; torch.load(weights_only=True) reads or refuses it
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(
            f"{path} is truncated or damaged: its zip directory is missing (an interrupted download?). "
            "Delete it and download it again."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CorruptCheckpointError(f"{path} is damaged ({error}). Delete it and download it again.") from error
    if bad is not None:
        raise CorruptCheckpointError(
            f"{path} is damaged: the member {bad!r} fails its checksum. Delete it and download it again."
        )


def _base_config(base_model: str, base_kwargs: dict[str, Any]) -> dict[str, Any]:
    folder = Path(base_model).expanduser()
    if folder.is_dir():
        path: Path | None = folder / "config.json"
        if not path.is_file():
            raise CheckpointNotFoundError(f"base_model folder {folder} has no config.json.")
    elif HUB_ID.match(base_model):
        path = hub_file(base_model, "config.json", required=True, **base_kwargs)
    else:
        raise CheckpointNotFoundError(f"base_model {base_model!r} is neither a folder nor a Hub id.")
    assert path is not None
    return json.loads(path.read_text())


def _set_scalars(model: HySAC, scalars: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in scalars.items():
            getattr(model, name).copy_(value.reshape(()).to(torch.float32))


def _load_processors(candidates: list[tuple[str | None, dict[str, Any]]]) -> tuple[Any, Any]:
    """The first tokenizer and image processor found among `candidates` (folder or Hub id); None if none.

    A candidate is only tried when its files are there (transformers would otherwise build an empty
    tokenizer from a bare config.json).
    """
    from transformers import AutoTokenizer

    from ..image_processors import clip_image_processor_class

    tokenizer = image_processor = None
    for source, kwargs in candidates:
        if source is None:
            continue
        if tokenizer is None and _has_any(source, ("tokenizer.json", "vocab.json"), kwargs):
            tokenizer = _try(lambda s=source, k=kwargs: AutoTokenizer.from_pretrained(s, **k))
        if image_processor is None and _has_any(source, ("preprocessor_config.json",), kwargs):
            image_processor = _try(lambda s=source, k=kwargs: clip_image_processor_class().from_pretrained(s, **k))
    return tokenizer, image_processor


def _has_any(source: str, names: tuple[str, ...], kwargs: dict[str, Any]) -> bool:
    folder = Path(source).expanduser()
    if folder.is_dir():
        return any((folder / name).is_file() for name in names)
    if not HUB_ID.match(source):
        return False
    return any(_try(lambda n=name: hub_file(source, n, required=False, **kwargs)) is not None for name in names)


def _try(load: Any) -> Any:
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# ------------------------------------------------------------------------------- saving


def save_hysac(model: HySAC, folder: Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """See `HySAC.save_pretrained`."""
    for name in ("text", "vision"):
        if hasattr(getattr(model, name), "merge_and_unload"):
            raise UnsupportedModelError(
                f"HySAC.save_pretrained: the {name} tower is a peft model; call model.merge_lora() first."
            )
    with atomic_folder(folder) as tmp:  # written whole: a failure leaves no half-written model
        _fill_hysac_folder(model, tmp, metadata)
    return folder


def _fill_hysac_folder(model: HySAC, tmp: Path, metadata: dict[str, Any] | None) -> None:
    from .. import __version__
    from ..convert import export_encoder_with_digest

    provenance = {"provenance": "hysac", **(metadata or {})}
    encoders = {}
    for kind, tower in (("text", model.text), ("vision", model.vision)):
        path, digest = export_encoder_with_digest(
            tower, tmp / encoder_file_name(kind), base_model=model.base_model, metadata=provenance
        )
        encoders[kind] = {"file": path.name, "digest": digest}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "base_model": model.base_model,
        "log_curvature": model.log_curvature.item(),
        "curvature": model.curvature.item(),
        "curvature_range": list(model.curvature_range),
        "log_text_alpha": model.log_text_alpha.item(),
        "log_image_alpha": model.log_image_alpha.item(),
        "logit_scale": model.logit_scale.item(),
        "bounds": model.bounds.to_dict() if model.bounds is not None else None,
        "encoders": encoders,
        "metadata": metadata or {},
    }
    _write_json_atomic(tmp / CONFIG_NAME, config)
    for processor in (model.tokenizer, model.image_processor):
        if processor is not None and hasattr(processor, "save_pretrained"):
            processor.save_pretrained(tmp)


def _write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=True, default=str))
