"""Collapse the LoRA factors into the base weights and write both encoders in safe_encoders' format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from safe_encoders.atomic import atomic_folder
from safe_encoders.format import encoder_file_name
from train.config import TrainConfig
from train.finite import require_finite
from train.model import ContrastiveClipModel, SafeClipModel


def require_finite_export(module: nn.Module, what: str) -> None:
    """Refuse (NonFiniteError) to export ``module`` if a weight of it is NaN or infinite: call it before writing."""
    require_finite(
        module.state_dict(),
        f"export refused: {what}",
        "nothing was written; the weights come from a training that diverged: train again with a lower optim.lr "
        "or with optim.max_grad_norm",
    )


def training_metadata(
    method: str,
    lora: Any,
    *,
    config: TrainConfig | None = None,
    data_description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What an exported checkpoint says about its training: method, LoRA settings, recipe (and its digest), data."""
    info: dict[str, Any] = {
        "provenance": "trained",
        "method": method,
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
    }
    if config is not None:
        info["config_digest"] = config.digest()
        info["config"] = config.to_dict()
    if data_description is not None:
        info["data"] = data_description
    info.update(extra or {})
    return info


def export_safe_clip(
    model: SafeClipModel,
    out_dir: str | Path,
    *,
    base_model: str,
    config: TrainConfig | None = None,
    data_description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Merge the adapters (peft ``merge_and_unload``) and export ``text`` and ``vision`` encoder files.

    The model's adapters are folded in place: do this once, at the end of training. Returns
    ``{"text": path, "vision": path}`` of ``out_dir/{text,vision}_encoder.safetensors``. The folder is written whole
    (``safe_encoders.atomic.atomic_folder``): a failure leaves no partial folder.
    """
    from safe_encoders import export_encoder

    out = Path(out_dir)
    lora = model.lora
    text, vision = model.merged()
    require_finite_export(text, "the merged text encoder")
    require_finite_export(vision, "the merged vision encoder")
    common = training_metadata("safe-clip", lora, config=config, data_description=data_description, extra=metadata)
    with atomic_folder(out) as tmp:  # written whole: a full disk leaves no folder with the text encoder only
        for kind, encoder, targets in (("text", text, lora.text_targets), ("vision", vision, lora.vision_targets)):
            encoder.eval()
            export_encoder(
                encoder,
                tmp / encoder_file_name(kind),
                base_model=base_model,
                metadata={**common, "lora_targets": list(targets)},
            )
    return {kind: out / encoder_file_name(kind) for kind in ("text", "vision")}


def model_card(export_dir: str | Path) -> str:
    """A Hub model card (README.md) describing the encoders in ``export_dir``, from their own headers."""
    from safe_encoders.format import read_encoder_header

    infos = {kind: read_encoder_header(Path(export_dir) / encoder_file_name(kind)) for kind in ("text", "vision")}
    text = infos["text"]
    prov = text.provenance
    base = text.base_model or "unknown"
    rows = "\n".join(
        f"| {kind} | {info.config.get('hidden_size')} | {info.config.get('num_hidden_layers')} | `{info.digest}` |"
        for kind, info in infos.items()
    )
    return f"""---
library_name: transformers
license: cc-by-nc-4.0
base_model: {base}
tags: [clip, safe-clip, safe-encoders, nsfw-removal]
---

# Safe-CLIP encoders fine-tuned from `{base}`

CLIP encoders fine-tuned with the Safe-CLIP method (Poppi et al., ECCV 2024): unsafe text and
images are redirected to where their safe counterparts lie in the original embedding space, safe
inputs keep their original embeddings. LoRA (rank {prov.get("lora_rank")}, alpha {prov.get("lora_alpha")})
was merged into the weights, so the encoders have the architecture and cost of the originals.

| encoder | width | layers | digest |
|---|---|---|---|
{rows}

Data: {prov.get("data", "not recorded")}. Training config digest: `{prov.get("config_digest", "not recorded")}`.
Written by safe-encoders {text.library_version}.

## Use

```python
from safe_encoders import make_safe
pipe = make_safe(pipe, checkpoint="<this repository>")
```

## Limits

Reduces, does not eliminate, unsafe content; covers the NSFW concepts of the training data only.
Non-commercial licence (as the ViSU data and the original Safe-CLIP release).
"""


def push_to_hub(export_dir: str | Path, repo_id: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload ``export_dir`` (the two encoder files) with a generated model card; returns the repo URL."""
    from huggingface_hub import HfApi

    export_dir = Path(export_dir)
    card = export_dir / "README.md"
    if not card.exists():
        card.write_text(model_card(export_dir))
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(export_dir), commit_message="Upload Safe-CLIP encoders")
    return str(url)


def export_clip_model(model: ContrastiveClipModel, out_dir: str | Path) -> Path:
    """Write a contrastively trained model as one transformers ``CLIPModel`` folder (with its tokenizer and
    image processor when the model holds them): a base model that ``from_pretrained`` and
    ``train.model.load_base_encoders`` read, e.g. to fine-tune with Safe-CLIP or HySAC. Written whole."""
    from transformers import CLIPConfig, CLIPModel

    text, vision = model.merged()
    config = CLIPConfig(
        text_config=text.config.to_dict(),
        vision_config=vision.config.to_dict(),
        projection_dim=text.config.projection_dim,
        logit_scale_init_value=model.log_logit_scale.item(),
    )
    clip = CLIPModel(config)
    state = {**text.state_dict(), **vision.state_dict(), "logit_scale": model.log_logit_scale.detach()}
    clip.load_state_dict(state, strict=True)  # every tensor of the CLIPModel comes from the trained towers
    require_finite_export(clip, "the merged CLIP model")
    with atomic_folder(out_dir) as tmp:
        clip.save_pretrained(tmp)
        for processor in (model.tokenizer, model.image_processor):
            if processor is not None:
                processor.save_pretrained(tmp)
    return Path(out_dir)
