"""LoRA set-up of the two CLIP towers and the frozen references T0 / V0.

The references must not drift while the LoRA factors train (the authors' code lets them). Two
ways are offered, both exact:

- :class:`CachedReferences` embeds the safe texts and images of the training set once with the
  original encoders (adapters disabled) and looks them up by dataset index: no cost per step.
- :class:`LiveReferences` runs the adapter-disabled encoders on each batch (under ``no_grad``), for
  data where caching cannot apply (random image augmentation).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from train.config import HySACSettings, LoraSettings


def load_base_encoders(
    base_model: str, **hub_kwargs: Any
) -> tuple[CLIPTextModelWithProjection, CLIPVisionModelWithProjection]:
    """The text and vision towers (with projections) of a transformers CLIPModel folder or Hub id."""
    text = CLIPTextModelWithProjection.from_pretrained(base_model, **hub_kwargs)
    vision = CLIPVisionModelWithProjection.from_pretrained(base_model, **hub_kwargs)
    return text, vision


def _lora_config(settings: LoraSettings, targets: list[str]) -> LoraConfig:
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        bias="none",
        target_modules=list(targets),
    )


class TwoTowerModel(nn.Module):
    """What the training loop needs of a model: both towers (``self.text`` / ``self.vision``), the four
    embeddings of a collated batch, and its trainable tensors by name (for checkpoints and the best weights)."""

    text: nn.Module
    vision: nn.Module

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values).image_embeds

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T(S), T(U), V(V), V(G) of a collated batch."""
        return {
            "text_safe": self.encode_text(batch["safe_input_ids"], batch["safe_attention_mask"]),
            "text_unsafe": self.encode_text(batch["unsafe_input_ids"], batch["unsafe_attention_mask"]),
            "image_safe": self.encode_image(batch["safe_pixel_values"]),
            "image_unsafe": self.encode_image(batch["unsafe_pixel_values"]),
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by parameter name, detached."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"load_trainable_state_dict: missing {missing[:5]}, unexpected {extra[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)


class ContrastiveClipModel(TwoTowerModel):
    """Both towers trained whole with CLIP's own loss and a learned temperature: CLIP pre-training.

    The demo pre-trains its tiny CLIP with it on the safe *and* the unsafe pairs, as web-trained CLIP sees
    both. The logit scale starts at CLIP's ``1 / 0.07`` and is capped at 100, as in CLIP.
    """

    def __init__(
        self,
        text: CLIPTextModelWithProjection,
        vision: CLIPVisionModelWithProjection,
        *,
        logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
        tokenizer: Any = None,
        image_processor: Any = None,
    ) -> None:
        super().__init__()
        if not 0 < logit_scale <= max_logit_scale:
            raise ValueError(f"need 0 < logit_scale <= max_logit_scale, got {logit_scale} and {max_logit_scale}")
        self.text, self.vision = text.requires_grad_(True), vision.requires_grad_(True)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.max_logit_scale = max_logit_scale
        self.tokenizer, self.image_processor = tokenizer, image_processor

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def no_weight_decay(self) -> set[str]:
        """The temperature trains without weight decay (as in CLIP)."""
        return {"log_logit_scale"}

    def merged(self) -> tuple[nn.Module, nn.Module]:
        """The two towers (no adapters to fold in)."""
        return self.text, self.vision


class SafeClipModel(TwoTowerModel):
    """Both CLIP towers with LoRA adapters; only the LoRA factors train.

    A tower with no targets stays a plain frozen transformers model.
    """

    def __init__(
        self, text: CLIPTextModelWithProjection, vision: CLIPVisionModelWithProjection, lora: LoraSettings
    ) -> None:
        super().__init__()
        lora.validate()
        self.lora = lora
        for model in (text, vision):
            model.requires_grad_(False)
        self.text = get_peft_model(text, _lora_config(lora, lora.text_targets)) if lora.text_targets else text
        self.vision = get_peft_model(vision, _lora_config(lora, lora.vision_targets)) if lora.vision_targets else vision

    @contextlib.contextmanager
    def original(self) -> Iterator[None]:
        """Within this context both towers compute T0 / V0 (adapters disabled)."""
        with contextlib.ExitStack() as stack:
            for tower in (self.text, self.vision):
                if isinstance(tower, PeftModel):
                    stack.enter_context(tower.disable_adapter())
            yield

    def merged(self) -> tuple[CLIPTextModelWithProjection, CLIPVisionModelWithProjection]:
        """Fold the LoRA factors into the base weights (peft ``merge_and_unload``): plain encoders.

        The adapters are gone from this model afterwards; call it once, at the end.
        """
        text = self.text.merge_and_unload() if isinstance(self.text, PeftModel) else self.text
        vision = self.vision.merge_and_unload() if isinstance(self.vision, PeftModel) else self.vision
        return text, vision


class HySACTrainModel(SafeClipModel):
    """Both towers with LoRA adapters inside a :class:`safe_encoders.hysac.HySAC` (``self.hysac``).

    Same interface as :class:`SafeClipModel` for the loop; ``forward`` returns the points of S, U, V, G
    on the hyperboloid. The trainable tensors are the LoRA factors plus HySAC's log-curvature (when
    learned), feature scales and logit scale. ``tokenizer`` / ``image_processor`` travel to the export.
    """

    def __init__(
        self,
        text: CLIPTextModelWithProjection,
        vision: CLIPVisionModelWithProjection,
        lora: LoraSettings,
        settings: HySACSettings | None = None,
        *,
        base_model: str | None = None,
        tokenizer: Any = None,
        image_processor: Any = None,
    ) -> None:
        from safe_encoders.hysac import HySAC

        super().__init__(text, vision, lora)
        settings = settings or HySACSettings()
        settings.validate()
        self.settings = settings
        self.hysac = HySAC(
            self.text,
            self.vision,
            curvature=settings.curvature,
            curvature_range=tuple(settings.curvature_range),
            learn_curvature=settings.learn_curvature,
            alpha_init=settings.alpha_init,
            logit_scale_init=settings.logit_scale,
            base_model=base_model,
            tokenizer=tokenizer,
            image_processor=image_processor,
        )

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.hysac.encode_text(input_ids, attention_mask)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hysac.encode_image(pixel_values)

    def loss(self, emb: dict[str, torch.Tensor], weights: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The HySAC loss (``train.hysac_losses.hysac_loss``) of ``forward``'s output, with the learned parameters."""
        from train.hysac_losses import hysac_loss

        return hysac_loss(
            **emb,
            curvature=self.hysac.curvature,
            logit_scale=self.hysac.contrastive_scale,
            weights=weights or self.settings.hysac_weights(),
            k=self.settings.cone_k,
        )

    def clamp_parameters_(self) -> None:
        """The release's clamps of curvature, feature scales and logit scale (``HySAC.clamp_parameters_``),
        after each optimizer step."""
        self.hysac.clamp_parameters_()

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the release trains without weight decay: logit scale, alphas, curvature."""
        from safe_encoders.hysac.model import SCALAR_PARAMETERS

        return {f"hysac.{name}" for name in SCALAR_PARAMETERS}

    def similarity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Minus the pairwise Lorentz distances (what retrieval ranks by)."""
        return self.hysac.similarity(x, y)

    def merged_hysac(self) -> Any:
        """Fold the LoRA factors into the towers and return the plain ``HySAC`` (call once, at the end)."""
        text, vision = self.merged()
        self.text = self.hysac.text = text
        self.vision = self.hysac.vision = vision
        return self.hysac


class CachedReferences:
    """T0(S) and V0(V) of every item of a dataset, computed once; looked up by ``batch["index"]``."""

    def __init__(self, text: torch.Tensor, image: torch.Tensor) -> None:
        if text.shape[0] != image.shape[0]:
            raise ValueError(f"CachedReferences: {text.shape[0]} text rows vs {image.shape[0]} image rows")
        self.text, self.image = text, image

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: SafeClipModel, batches: Iterable[dict[str, Any]], size: int, device: torch.device | str = "cpu"
    ) -> CachedReferences:
        """Embed the safe side of every batch with the original encoders; ``size`` = dataset length."""
        was_training = model.training
        model.eval()
        text: torch.Tensor | None = None
        image: torch.Tensor | None = None
        seen = torch.zeros(size, dtype=torch.bool)
        try:
            with model.original():
                for batch in batches:
                    idx = batch["index"]
                    t = model.encode_text(batch["safe_input_ids"].to(device), batch["safe_attention_mask"].to(device))
                    v = model.encode_image(batch["safe_pixel_values"].to(device))
                    if text is None or image is None:
                        text = torch.zeros(size, t.shape[1], dtype=torch.float32)
                        image = torch.zeros(size, v.shape[1], dtype=torch.float32)
                    text[idx], image[idx] = t.float().cpu(), v.float().cpu()
                    seen[idx] = True
        finally:
            model.train(was_training)
        if text is None or image is None or not seen.all():
            raise ValueError(f"CachedReferences.build: batches covered {int(seen.sum())} of {size} items")
        return cls(text, image)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch["index"].cpu()
        device = batch["safe_input_ids"].device
        return self.text[idx].to(device), self.image[idx].to(device)

    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write the cache atomically: a killed run leaves the old file or none, never a truncated one."""
        from safe_encoders.atomic import atomic_write

        tensors = {"text": self.text.contiguous(), "image": self.image.contiguous()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint}))

    @classmethod
    def load(cls, path: str | Path, fingerprint: str) -> CachedReferences | None:
        """The saved cache, or None when absent or made for something else (other data / base model)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") != fingerprint:
                return None
        tensors = load_file(str(path))
        return cls(tensors["text"], tensors["image"])


class LiveReferences:
    """T0(S), V0(V) recomputed for each batch, by ``encoders`` (default: the model with adapters disabled)."""

    def __init__(
        self,
        model: SafeClipModel,
        encoders: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.model = model
        self.encoders = encoders

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoders is not None:
            return self.encoders(batch)
        with self.model.original():
            return (
                self.model.encode_text(batch["safe_input_ids"], batch["safe_attention_mask"]),
                self.model.encode_image(batch["safe_pixel_values"]),
            )
