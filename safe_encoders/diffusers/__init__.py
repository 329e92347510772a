"""The diffusers adapter: which pipeline components `make_safe` swaps, and Safe Latent Diffusion from
wherever the installed diffusers keeps it (`StableDiffusionPipelineSafe`, `SafetyConfig`, loaded lazily)."""

from typing import Any

from .pipelines import DIFFUSERS_PIPELINE, pipeline_slots
from .sld import SLDUnavailableError, sld_classes

__all__ = [
    "DIFFUSERS_PIPELINE",
    "SLDUnavailableError",
    "SafetyConfig",
    "StableDiffusionPipelineSafe",
    "pipeline_slots",
    "sld_classes",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing the SLD pipeline imports diffusers' deprecated pipelines, which `make_safe` does not need.
    if name in ("StableDiffusionPipelineSafe", "SafetyConfig"):
        return sld_classes()[name == "SafetyConfig"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
