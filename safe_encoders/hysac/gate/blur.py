"""The gate's blur: a separable Gaussian blur whose sigma scales with the image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images; sigma = `sigma_fraction` x the shorter side (in pixels)."""
    if not math.isfinite(sigma_fraction) or sigma_fraction <= 0:
        raise ValueError(f"gaussian_blur: sigma_fraction must be a finite number > 0; got {sigma_fraction}.")
    if images.numel() == 0:
        return images
    height, width = images.shape[-2:]
    sigma = max(sigma_fraction * min(height, width), 0.5)
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    if radius < 1:
        return images
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)
