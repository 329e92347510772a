"""`HySAC`: a CLIP whose two towers embed into one Lorentz space, safe content near the root.

The text and image features of a CLIP (projected, not normalised) are scaled by learnable
factors `alpha` and lifted onto the hyperboloid with the exponential map at the root:
`x = expmap0(alpha * f, c)`. Both `encode_*` methods return the space components of those points
(see `lorentz`); the similarity of two points is minus their geodesic distance.

Parameters learned in log space, with the initial values and clamps of the authors' release
(REFERENCE.md section 7b): `log_curvature` (init log 1, clamped to `log curvature_range`, default
[log 0.1, log 10]), `log_text_alpha` and `log_image_alpha` (init log(1/sqrt(embed_dim)), clamped to
<= 0: the scales never enlarge the features), `logit_scale` (init log(1/0.07), clamped to
[log(1/0.07), log 100]). `clamp_parameters_` applies all of them; the trainer calls it after every
optimizer step (the release clamps before each step: the same values reach every forward pass, and
ours also leave the saved parameters in range), and loading calls it to check a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..errors import UnsupportedModelError
from . import lorentz
from .bounds import HySACBounds, Modality

if TYPE_CHECKING:
    from .classify import UnsafeScores

LOGIT_SCALE_BOUNDS: tuple[float, float] = (math.log(1 / 0.07), math.log(100.0))
"""Clamp of the (log) logit scale, as released: [ln(1/0.07), ln 100] = [2.6593, 4.6052]."""
MAX_LOG_ALPHA = 0.0
"""Upper clamp of the log feature scales (alpha <= 1)."""
SCALAR_PARAMETERS: tuple[str, ...] = ("log_curvature", "log_text_alpha", "log_image_alpha", "logit_scale")
"""The learned scalars (no weight decay in the release's recipe)."""

logger = logging.getLogger("safe_encoders")


class HySAC(nn.Module):
    """Hyperbolic safety-aware CLIP.

    Args:
        text: the text tower: a transformers `CLIPTextModelWithProjection` (or a peft model wrapping
            one, for training). Anything whose output has `text_embeds` (or `pooler_output`) works.
        vision: the vision tower: `CLIPVisionModelWithProjection` or a peft model wrapping one.
        curvature: initial curvature c (the space has curvature -c).
        curvature_range: `(low, high)` clamp of c.
        learn_curvature: whether `log_curvature` receives gradients.
        alpha_init: initial scale factors; default `1 / sqrt(embed_dim)`.
        logit_scale_init: initial (exponentiated) logit scale of the contrastive loss.
        bounds: root-distance statistics (`HySACBounds`) giving the default unsafe thresholds.
        base_model: the CLIP the towers were fine-tuned from (Hub id or folder), recorded on export.
        tokenizer, image_processor: used by `unsafe_score` for raw texts / images.
    """

    def __init__(
        self,
        text: nn.Module,
        vision: nn.Module,
        *,
        curvature: float = 1.0,
        curvature_range: tuple[float, float] = (0.1, 10.0),
        learn_curvature: bool = True,
        alpha_init: float | None = None,
        logit_scale_init: float = 1 / 0.07,
        bounds: HySACBounds | None = None,
        base_model: str | None = None,
        tokenizer: Any = None,
        image_processor: Any = None,
    ) -> None:
        super().__init__()
        _check_positive("curvature", curvature)
        if len(curvature_range) != 2:
            raise ValueError(f"HySAC: curvature_range must be (low, high); got {curvature_range!r}.")
        for value in curvature_range:
            _check_positive("curvature_range", value)
        for name, value in (("alpha_init", alpha_init), ("logit_scale_init", logit_scale_init)):
            if value is not None:
                _check_positive(name, value)
        low, high = lorentz.curvature_log_bounds(*curvature_range)
        if not curvature_range[0] <= curvature <= curvature_range[1]:
            raise ValueError(f"HySAC: curvature {curvature} is outside curvature_range {curvature_range}.")
        if not math.exp(LOGIT_SCALE_BOUNDS[0]) - 1e-6 <= logit_scale_init <= math.exp(LOGIT_SCALE_BOUNDS[1]) + 1e-6:
            raise ValueError(f"HySAC: logit_scale_init {logit_scale_init} is outside [1/0.07, 100] (its clamp).")
        if alpha_init is not None and not 0 < alpha_init <= 1:
            raise ValueError(f"HySAC: alpha_init {alpha_init} must be in (0, 1] (log alpha is clamped to <= 0).")
        self.text = text
        self.vision = vision
        self.curvature_range = (float(curvature_range[0]), float(curvature_range[1]))
        self._log_curvature_bounds = (low, high)
        embed_dim = self.embed_dim
        alpha = alpha_init if alpha_init is not None else embed_dim**-0.5
        self.log_curvature = nn.Parameter(torch.tensor(math.log(curvature)), requires_grad=learn_curvature)
        self.log_text_alpha = nn.Parameter(torch.tensor(math.log(alpha)))
        self.log_image_alpha = nn.Parameter(torch.tensor(math.log(alpha)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.bounds = bounds
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_clip_model(cls, clip: nn.Module, **kwargs: Any) -> HySAC:
        """Build on a transformers `CLIPModel`: its towers become `...WithProjection` models sharing its tensors."""
        from ..loading import empty_encoder, fill_encoder

        config = getattr(clip, "config", None)
        if getattr(config, "model_type", None) != "clip":
            raise UnsupportedModelError(
                f"HySAC.from_clip_model takes a transformers CLIPModel, not {type(clip).__name__}. "
                "For separate towers use HySAC(text, vision)."
            )
        state = clip.state_dict()
        towers = []
        for kind, sub in (("text", config.text_config), ("vision", config.vision_config)):
            sub = sub.__class__.from_dict({**sub.to_dict(), "projection_dim": config.projection_dim})
            tower, names = empty_encoder(kind, sub, True)  # type: ignore[arg-type]
            fill_encoder(tower, names, state)
            towers.append(tower.eval())
        kwargs.setdefault("base_model", getattr(config, "_name_or_path", None) or None)
        return cls(towers[0], towers[1], **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        base_model: str | None = None,
        lora_alpha: float = 1.0,
        torch_dtype: torch.dtype | None = None,
        load_processors: bool = True,
        **hub_kwargs: Any,
    ) -> HySAC:
        """Load a HySAC checkpoint: the authors' release or our own export.

        Args:
            source: a local folder (or `hysac_model.pth` / `hysac_config.json` inside one), the
                registry name "hysac", or a Hub id (`aimagelab/hysac`).
                - Our export (`save_pretrained`): `hysac_config.json` + `text_encoder.safetensors` +
                  `vision_encoder.safetensors`; no pickle involved.
                - The authors' release: `hysac_model.pth` (a state dict of the peft-wrapped towers
                  plus `curv` / `textual_alpha` / `visual_alpha` / `logit_scale`), read only with
                  `torch.load(weights_only=True)`, and `hysac_bounds.json`. The LoRA factors are
                  merged into the base weights with peft (rank and target modules read from the
                  tensors). Keys nobody uses are reported in a warning; missing ones raise.
            base_model: the CLIP the release was fine-tuned from (config, and any base weight the
                file lacks). Default: the one recorded in our export, else
                `openai/clip-vit-large-patch14`.
            lora_alpha: LoRA alpha of the release (scaling = alpha / rank). It is not stored in the
                file; the authors' published set-up uses r=16, alpha=1.
            torch_dtype: cast the loaded model to this dtype; None keeps the stored one.
            load_processors: also load a tokenizer and image processor (from the checkpoint, else
                from `base_model`) for `unsafe_score` on raw inputs; skipped quietly if absent.
            **hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`
                (for `source`; `base_model` gets the same minus `revision`).
        """
        from .checkpoints import load_hysac

        return load_hysac(
            cls,
            source,
            base_model=base_model,
            lora_alpha=lora_alpha,
            torch_dtype=torch_dtype,
            load_processors=load_processors,
            hub_kwargs=hub_kwargs,
        )

    def save_pretrained(self, folder: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write our format: `text_encoder.safetensors`, `vision_encoder.safetensors` (as `export_encoder`
        writes them), `hysac_config.json` (curvature, alphas, logit scale, bounds, format version), and the
        tokenizer / image processor when the model has them. Returns the folder.

        LoRA-wrapped towers must be merged first (`merge_lora()`).
        """
        from .checkpoints import save_hysac

        return save_hysac(self, Path(folder), metadata=metadata)

    def merge_lora(self) -> HySAC:
        """Fold peft LoRA factors of both towers into their weights (`merge_and_unload`), in place."""
        for name in ("text", "vision"):
            tower = getattr(self, name)
            if hasattr(tower, "merge_and_unload"):
                setattr(self, name, tower.merge_and_unload())
        return self

    # ------------------------------------------------------------------ parameters

    @property
    def embed_dim(self) -> int:
        config = getattr(self.text, "config", None)
        dim = getattr(config, "projection_dim", None) or getattr(config, "hidden_size", None)
        if dim is None:
            raise UnsupportedModelError("HySAC: cannot read the embedding width from the text tower's config.")
        return int(dim)

    @property
    def curvature(self) -> torch.Tensor:
        """c (a 0-d tensor, differentiable), clamped to `curvature_range`."""
        low, high = self._log_curvature_bounds
        return self.log_curvature.clamp(low, high).exp()

    @property
    def text_alpha(self) -> torch.Tensor:
        return self.log_text_alpha.exp()

    @property
    def image_alpha(self) -> torch.Tensor:
        return self.log_image_alpha.exp()

    def parameter_bounds(self) -> dict[str, tuple[float, float]]:
        """The clamp of each learned scalar (log space): name -> (low, high)."""
        return {
            "log_curvature": self._log_curvature_bounds,
            "log_text_alpha": (-math.inf, MAX_LOG_ALPHA),
            "log_image_alpha": (-math.inf, MAX_LOG_ALPHA),
            "logit_scale": LOGIT_SCALE_BOUNDS,
        }

    @torch.no_grad()
    def clamp_parameters_(self, *, label: str | None = None) -> dict[str, tuple[float, float]]:
        """Apply the release's clamps to the learned scalars, in place; returns `{name: (before, after)}`
        of those that moved.

        Training calls it after every optimizer step (the clamps inside `curvature` / `logits` alone would
        leave the raw parameters drifting with a zero gradient). Loading calls it with the checkpoint's
        `label`: a moved value is reported in a warning (the model then computes what training did).
        A non-finite value is refused (ValueError) before anything is changed.
        """
        bounds = self.parameter_bounds()
        values = {name: getattr(self, name) for name in bounds}
        bad = {name: v.item() for name, v in values.items() if not torch.isfinite(v).all()}
        if bad:
            raise ValueError(f"HySAC{f' ({label})' if label else ''}: non-finite learned scalars {bad}.")
        moved = {}
        for name, (low, high) in bounds.items():
            before = values[name].item()
            values[name].clamp_(low, high)
            if values[name].item() != before:
                moved[name] = (before, values[name].item())
        if moved and label is not None:
            logger.warning("%s: learned scalars outside the training clamps, clamped: %s", label, moved)
        return moved

    # ------------------------------------------------------------------ encoding

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, project: bool = True
    ) -> torch.Tensor:
        """Texts -> points on the hyperboloid (space components), `(B, embed_dim)`.

        `project=False` returns the tower's Euclidean features (before `alpha` and `expmap0`).
        """
        output = self.text(input_ids=input_ids, attention_mask=attention_mask)
        features = _first_present(output, "text_embeds", "pooler_output")
        if not project:
            return features
        return lorentz.expmap0(features * self.text_alpha.to(features.dtype), self.curvature)

    def encode_image(self, pixel_values: torch.Tensor, *, project: bool = True) -> torch.Tensor:
        """Images (normalised pixel values, as the CLIP image processor makes them) -> points, `(B, embed_dim)`."""
        tower_dtype = _dtype_of(self.vision)
        output = self.vision(pixel_values=pixel_values.to(tower_dtype))
        features = _first_present(output, "image_embeds", "pooler_output")
        if not project:
            return features
        return lorentz.expmap0(features * self.image_alpha.to(features.dtype), self.curvature)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{"text_embeds", "image_embeds", "logits_per_text"}` for whatever inputs are given."""
        out: dict[str, torch.Tensor] = {}
        if input_ids is not None:
            out["text_embeds"] = self.encode_text(input_ids, attention_mask)
        if pixel_values is not None:
            out["image_embeds"] = self.encode_image(pixel_values)
        if "text_embeds" in out and "image_embeds" in out:
            out["logits_per_text"] = self.logits(out["text_embeds"], out["image_embeds"])
        return out

    # ------------------------------------------------------------------ geometry on top

    def similarity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Minus the pairwise geodesic distances, `(N, M)`: higher is more similar."""
        return -lorentz.pairwise_distance(x, y, self.curvature)

    @property
    def contrastive_scale(self) -> torch.Tensor:
        """`exp(logit_scale)` with the logit scale clamped to `LOGIT_SCALE_BOUNDS` (1/0.07 .. 100)."""
        return self.logit_scale.clamp(*LOGIT_SCALE_BOUNDS).exp()

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Contrastive logits: `similarity * contrastive_scale`."""
        return self.similarity(x, y) * self.contrastive_scale

    def root_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each point from the root: the unsafe score."""
        return lorentz.root_distance(x, self.curvature)

    def threshold(self, modality: Modality) -> float:
        """The default unsafe threshold of `modality`, from the bounds."""
        if self.bounds is None:
            raise ValueError(
                f"This HySAC has no bounds, so there is no default {modality} threshold. Pass threshold=..., "
                "set model.bounds (compute_bounds on a validation set) or calibrate one with calibrate_threshold."
            )
        return self.bounds.threshold(modality)

    def traverse(
        self,
        x: torch.Tensor,
        modality: Modality = "text",
        *,
        method: str = "release",
        strength: float = 1.0,
        boundary: float | None = None,
        margin: float = 0.0,
    ) -> torch.Tensor:
        """Safety traversal of a batch of points of `modality` (`traversal.traverse`).

        `method="release"` (default): the authors' traversal, with `boundary` (default: the modality's
        bound, `S.up_95` for texts, `V.up_95` for images) as `up95`: points beyond
        `tau = up95 + tanh((up95 - 0.8) / c) + 1` are rescaled to Euclidean norm `tau`.
        `method="geodesic"`: `traverse_to_safe` to root distance `boundary` (same default), with
        `strength` and `margin`.
        """
        from .traversal import traverse

        if boundary is None:
            boundary = self.threshold(modality)
        return traverse(x, self.curvature, boundary, method=method, strength=strength, margin=margin)

    def unsafe_score(
        self,
        texts: str | Sequence[str] | None = None,
        images: Any = None,
        *,
        pixel_values: torch.Tensor | None = None,
        text_threshold: float | None = None,
        image_threshold: float | None = None,
        batch_size: int = 32,
    ) -> UnsafeScores:
        """Score texts and/or images (see `classify.unsafe_score`)."""
        from .classify import unsafe_score

        return unsafe_score(
            self,
            texts=texts,
            images=images,
            pixel_values=pixel_values,
            text_threshold=text_threshold,
            image_threshold=image_threshold,
            batch_size=batch_size,
        )

    @property
    def device(self) -> torch.device:
        return self.log_curvature.device

    def tower(self, modality: Literal["text", "image"]) -> nn.Module:
        return self.text if modality == "text" else self.vision


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"HySAC: {name} must be a finite number > 0; got {value!r}.")


def _first_present(output: Any, *names: str) -> torch.Tensor:
    for name in names:
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, torch.Tensor):
        return output
    raise UnsupportedModelError(f"HySAC: the tower's output has none of {names}; use a CLIP ...WithProjection model.")


def _dtype_of(module: nn.Module) -> torch.dtype:
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
