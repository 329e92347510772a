"""Where an encoder's tensors come from: a Hub id, a local transformers folder, or one of our files.

Every source is opened lazily: the header says which tensors exist and their shapes, and only the
tensors that are asked for are read (`EncoderSource.read`, in `encoder_source`). The pickle policy
lives in `pickles` and only there: safetensors is preferred; a pickle weight file is read with
`torch.load(weights_only=True)` or refused.

`resolve_source` is the entry point; `names` parses checkpoint names, `local` and `hub` open what a
name names, `transformers_checkpoint` reads a transformers CLIP checkpoint (config + weights).
"""

from __future__ import annotations

from typing import Any

from ..registry import EncoderKind
from .encoder_source import EncoderSource
from .hub import hub_source
from .local import local_source
from .names import check_hub_kwargs, parse_source_name


def resolve_source(source: Any, kind: EncoderKind, **hub_kwargs: Any) -> EncoderSource:
    """Open `source` for its `kind` encoder.

    `source` is one of: a registry name (see `list_checkpoints`) or `Checkpoint`; a Hub id
    (`org/name` or `hf-hub:org/name`); a local transformers folder (config.json + weights); one of
    our `.safetensors` files; or a folder written by `convert_checkpoint`.
    """
    check_hub_kwargs(hub_kwargs)
    parsed = parse_source_name(source, cache_dir=hub_kwargs.get("cache_dir"))
    if parsed.path is not None:
        return local_source(parsed.path, kind)
    assert parsed.repo_id is not None
    base_model = parsed.entry.base_model if parsed.entry is not None else None
    source = hub_source(parsed.repo_id, kind, parsed.hub_kwargs(hub_kwargs), base_model)
    if parsed.entry is not None:  # a registry checkpoint: pinned in the trust store on first use
        source.provenance["registry"] = parsed.entry.name
    return source
