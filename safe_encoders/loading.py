"""Loading a CLIP text or vision encoder as a transformers model, reading only its own tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import CorruptCheckpointError
from .format import RECORD_KEY, module_names, tensor_digest
from .registry import EncoderKind
from .sources import resolve_source
from .sources.encoder_source import EncoderSource
from .swap import installed_fields, parse_dtype


def load_text_encoder(
    source: Any,
    *,
    torch_dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    with_projection: bool | None = None,
    **hub_kwargs: Any,
) -> nn.Module:
    """Load the text encoder of `source` as `CLIPTextModel` or `CLIPTextModelWithProjection`.

    Args:
        source: a registry name, Hub id, local transformers folder, or one of our `.safetensors` files.
        torch_dtype: dtype of the returned model (`torch.float16`, "float16", "bfloat16", ...); None or
            "auto" keeps the stored dtype.
        device: where to put the model (default CPU).
        with_projection: return `CLIPTextModelWithProjection` (True) or `CLIPTextModel` (False);
            None picks `...WithProjection` when the checkpoint has a projection head.
        **hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`.
    """
    dtype = parse_dtype(torch_dtype)
    return _load_encoder(resolve_source(source, "text", **hub_kwargs), dtype, device, with_projection)


def load_vision_encoder(
    source: Any,
    *,
    torch_dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    with_projection: bool | None = None,
    **hub_kwargs: Any,
) -> nn.Module:
    """Load the vision encoder of `source` as `CLIPVisionModel` or `CLIPVisionModelWithProjection`.

    Arguments as for `load_text_encoder`.
    """
    dtype = parse_dtype(torch_dtype)
    return _load_encoder(resolve_source(source, "vision", **hub_kwargs), dtype, device, with_projection)


def encoder_class(kind: EncoderKind, with_projection: bool) -> type[nn.Module]:
    import transformers

    name = {"text": "CLIPTextModel", "vision": "CLIPVisionModel"}[kind]
    return getattr(transformers, name + ("WithProjection" if with_projection else ""))


def empty_encoder(kind: EncoderKind, config: Any, with_projection: bool) -> tuple[nn.Module, dict[str, str]]:
    """A `kind` CLIP tower built from `config` (a config object or its dict) without random init, and the map
    published name -> key in its state dict (ignored buffers left out). Fill it with `fill_encoder`.

    Parameters are created on the meta device; buffers such as position_ids are created for real
    because checkpoints do not carry them.
    """
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPVisionConfig

    if isinstance(config, Mapping):
        config = (CLIPTextConfig if kind == "text" else CLIPVisionConfig).from_dict(dict(config))
    with init_empty_weights(include_buffers=False):
        model = encoder_class(kind, with_projection)(config)
    return model, module_names(model.state_dict().keys(), kind)


def fill_encoder(model: nn.Module, names: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Give `model` (from `empty_encoder`) the `tensors` (published names) as its own; every name is required."""
    model.load_state_dict({key: tensors[name] for name, key in names.items()}, strict=True, assign=True)


def _load_encoder(
    source: EncoderSource,
    torch_dtype: torch.dtype | None,
    device: str | torch.device | None,
    with_projection: bool | None,
) -> nn.Module:
    if with_projection and not source.has_projection:
        raise CorruptCheckpointError(
            f"{source.label} has no {source.kind} projection head; pass with_projection=False (or None)."
        )
    projection = source.has_projection if with_projection is None else with_projection
    model, names = empty_encoder(source.kind, source.config, projection)
    config = model.config
    digests: dict[str, str] = {}
    tensors = source.read(names, digests)
    cast = {name: _cast(tensor, torch_dtype) for name, tensor in tensors.items()}
    fill_encoder(model, names, cast)
    installed = {
        key: digests[name] if cast[name] is tensors[name] else tensor_digest(cast[name]) for name, key in names.items()
    }
    setattr(
        model.config,
        RECORD_KEY,
        {"checkpoint": source.label, "identity": source.identity, "digest": source.digest,
         "base_model": source.base_model, "layers": f"{config.num_hidden_layers}/{config.num_hidden_layers}",
         **installed_fields(installed)},
    )  # fmt: skip
    if device is not None:
        model.to(device)
    return model.eval()


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
