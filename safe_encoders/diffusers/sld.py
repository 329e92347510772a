"""Safe Latent Diffusion (SLD) from the installed diffusers, wherever it keeps it.

diffusers moved `StableDiffusionPipelineSafe` and its presets (`SafetyConfig`) from
`diffusers.pipelines.stable_diffusion_safe` to `diffusers.pipelines.deprecated.stable_diffusion_safe`
(0.42 has only the latter; the pipeline is also exported at the top level). `sld_classes()` finds them in
any of those places:

    from safe_encoders.diffusers import SafetyConfig, StableDiffusionPipelineSafe
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import SafeEncodersError
from ..image_processors import no_torchvision_fallback_warning

#: Where diffusers versions keep the SLD module (its `__init__` holds both the pipeline and `SafetyConfig`).
SLD_MODULES: tuple[str, ...] = (
    "diffusers.pipelines.deprecated.stable_diffusion_safe",
    "diffusers.pipelines.stable_diffusion_safe",
)


class SLDUnavailableError(SafeEncodersError, ImportError):
    """The installed diffusers does not provide Safe Latent Diffusion."""


def sld_classes() -> tuple[type, Any]:
    """`(StableDiffusionPipelineSafe, SafetyConfig)` from the installed diffusers.

    Raises:
        SLDUnavailableError: no known location has them (a diffusers that dropped SLD); the message says
            which version is installed and what was tried.
    """
    import diffusers

    tried = []
    for name in SLD_MODULES:
        try:
            # the (lazily loaded) module names transformers.CLIPImageProcessor: torchvision's fallback warning
            with no_torchvision_fallback_warning():
                module = importlib.import_module(name)
                return module.StableDiffusionPipelineSafe, module.SafetyConfig
        except (ImportError, AttributeError) as error:
            tried.append(f"{name} ({type(error).__name__})")
    raise SLDUnavailableError(
        f"diffusers {diffusers.__version__} provides no StableDiffusionPipelineSafe / SafetyConfig (tried "
        f"{', '.join(tried)}). Safe Latent Diffusion was deprecated in diffusers; install a version that still "
        "ships it (0.42 has it under diffusers.pipelines.deprecated), e.g. pip install 'diffusers<0.43'."
    )
