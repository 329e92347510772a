"""Safe-CLIP as techniques of the eval-unlearn harness (PyPI ``eval-unlearn``), found through the
``eval_unlearn.techniques`` entry points of this package (``pip install "safe-encoders[eval-unlearn]"``).

- ``safe_clip``: any SD 1.x / 2.x ``model_id`` with its text encoder swapped by :func:`safe_encoders.make_safe`
  (``checkpoint``: anything ``make_safe`` takes, default ``auto``).
- ``safe_clip_sld``: Safe Latent Diffusion (diffusers' ``StableDiffusionPipelineSafe``) with the Safe-CLIP text
  encoder; ``strength`` is one of SLD's presets (``weak``, ``medium``, ``strong``, ``max``).
- ``hysac_gate``: the HySAC safety gate in front of a plain SD pipeline (``hysac``: the classifier's source;
  ``prompt_policy`` / ``image_policy`` / thresholds as :class:`~safe_encoders.hysac.SafetyGate` takes them). A
  blocked prompt gives a black image (``on_block="blank"``: the harness wants one image per prompt), and each
  call's gate report is kept on ``self.reports``.

The harness's conventions (those of its ``free_run`` technique): built from keyword arguments;
``generate(prompts, seed=None, **kwargs)`` returns one PIL image per prompt, prompt ``i`` drawn with a generator
on the technique's device seeded ``seed + i``; ``num_inference_steps`` / ``guidance_scale`` from the config unless
passed; fp16 on CUDA when ``use_fp16``. The swap is checked by ``make_safe`` before any image is made (it raises
rather than run with the original encoder); the swap record is kept on ``self.swap``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Any

import torch


def _config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A technique config from the harness's keyword arguments: unknown keys and a missing ``model_id`` refused."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(known)}")
    config = cls(**data)
    if not config.model_id:
        raise ValueError(f"{cls.__name__} needs 'model_id' (an SD 1.x / 2.x Hub id or folder)")
    return config


@dataclass(frozen=True)
class SafeCLIPConfig:
    """The keyword arguments of the ``safe_clip`` technique."""

    model_id: str = ""
    checkpoint: str = "auto"
    device: str | None = None
    use_fp16: bool = True
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    erase_concept: str | None = None
    """A label for the harness (its reports, and its check that ``err`` runs on a nudity technique); Safe-CLIP's
    encoders are trained on all their NSFW concepts at once, so it changes nothing in generation."""


@dataclass(frozen=True)
class SafeCLIPSLDConfig(SafeCLIPConfig):
    """The keyword arguments of the ``safe_clip_sld`` technique: ``strength`` names an SLD preset."""

    strength: str = "strong"


def _device(name: str | None) -> str:
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


class SafeCLIPTechnique:
    """``safe_clip``: a Stable Diffusion pipeline whose text encoder is Safe-CLIP's."""

    config_class = SafeCLIPConfig

    def __init__(self, **kwargs: Any) -> None:
        self.config = _config_from_dict(self.config_class, kwargs)
        self.device = _device(self.config.device)
        dtype = torch.float16 if (self.config.use_fp16 and self.device.startswith("cuda")) else torch.float32
        self.pipe = self._load(dtype)
        self._protect()
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def _protect(self) -> None:
        """Swap in the Safe-CLIP text encoder (checked by ``make_safe``: it raises rather than leave the original)."""
        from . import make_safe, swap_report

        make_safe(self.pipe, checkpoint=self.config.checkpoint)
        self.swap = swap_report(self.pipe)

    def _load(self, dtype: torch.dtype) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(
            self.config.model_id, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )

    def _call_options(self) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int | None = None, **kwargs: Any) -> list[Any]:
        """One image per prompt; prompt ``i`` seeded ``seed + i`` (none: unseeded)."""
        steps = kwargs.pop("num_inference_steps", self.config.num_inference_steps)
        guidance = kwargs.pop("guidance_scale", self.config.guidance_scale)
        images = []
        for i, prompt in enumerate(prompts):
            generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed + i)
            out = self.pipe(
                prompt=prompt,
                generator=generator,
                num_inference_steps=steps,
                guidance_scale=guidance,
                **self._call_options(),
                **kwargs,
            )
            images.append(out.images[0])
        return images


def sld_presets() -> dict[str, dict[str, float]]:
    """diffusers' SLD presets (``SafetyConfig``) by lower-case name."""
    from diffusers import StableDiffusionPipelineSafe

    module = importlib.import_module(StableDiffusionPipelineSafe.__module__.rsplit(".", 1)[0])
    config = module.SafetyConfig
    return {name.lower(): dict(getattr(config, name)) for name in ("WEAK", "MEDIUM", "STRONG", "MAX")}


class SafeCLIPSLDTechnique(SafeCLIPTechnique):
    """``safe_clip_sld``: Safe Latent Diffusion at a preset ``strength``, with the Safe-CLIP text encoder."""

    config_class = SafeCLIPSLDConfig

    def __init__(self, **kwargs: Any) -> None:
        strength = str(kwargs.get("strength", SafeCLIPSLDConfig.strength)).lower()
        presets = sld_presets()
        if strength not in presets:
            raise ValueError(f"safe_clip_sld: strength {strength!r} is not one of {sorted(presets)}")
        self.sld = presets[strength]
        super().__init__(**{**kwargs, "strength": strength})

    def _load(self, dtype: torch.dtype) -> Any:
        from diffusers import StableDiffusionPipelineSafe

        return StableDiffusionPipelineSafe.from_pretrained(
            self.config.model_id, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )

    def _call_options(self) -> dict[str, Any]:
        return dict(self.sld)


@dataclass(frozen=True)
class HySACGateConfig:
    """The keyword arguments of the ``hysac_gate`` technique."""

    model_id: str = ""
    hysac: str = "hysac"
    prompt_policy: str = "block"
    image_policy: str = "blur"
    text_threshold: float | None = None
    image_threshold: float | None = None
    redirect_checkpoint: str | None = None
    device: str | None = None
    use_fp16: bool = True
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    erase_concept: str | None = None


class HySACGateTechnique(SafeCLIPTechnique):
    """``hysac_gate``: a plain SD pipeline behind the HySAC safety gate (the pipeline's encoders unchanged)."""

    config_class = HySACGateConfig

    def _protect(self) -> None:
        """Put the gate in front of the pipeline (on its device, where the classifier will run)."""
        from .hysac import HySAC, SafetyGate, add_safety_gate

        gate = SafetyGate(
            classifier=HySAC.from_pretrained(self.config.hysac),
            prompt_policy=self.config.prompt_policy,
            image_policy=self.config.image_policy,
            on_block="blank",
            text_threshold=self.config.text_threshold,
            image_threshold=self.config.image_threshold,
            redirect_checkpoint=self.config.redirect_checkpoint,
        )
        self.pipe.to(self.device)
        self.handle = add_safety_gate(self.pipe, gate)
        self.swap = None
        self.reports: list[Any] = []

    def generate(self, prompts: list[str], seed: int | None = None, **kwargs: Any) -> list[Any]:
        images = []
        for i, prompt in enumerate(prompts):
            images += super().generate([prompt], None if seed is None else seed + i, **kwargs)
            self.reports.append(self.handle.last_report)
        return images
