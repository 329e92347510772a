"""Images in and out of the gate: any layout diffusers takes or returns <-> float pixels in [0, 1].

`read_images` turns PIL images, numpy arrays ((H, W, C) / (B, H, W, C), uint8 or float in [0, 1]),
torch tensors ((C, H, W) / (B, C, H, W), in [0, 1], or in [-1, 1] as diffusers reads tensors with
negative values) and (nested) lists of them into a list of (3, H, W) float tensors, plus a function
that writes changed pixels back in the caller's layout, dtype and device. Anything else (latents with
4 channels, image embeddings, unknown types) is None: the gate cannot look at it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .config import CLIP_MEAN, CLIP_STD


@dataclass
class ImageBatch:
    """Images as (3, H, W) float tensors in [0, 1] on the CPU, and the way back to the caller's layout."""

    pixels: list[torch.Tensor]
    restore: Callable[[list[torch.Tensor]], Any]

    def __len__(self) -> int:
        return len(self.pixels)


def read_images(value: Any) -> ImageBatch | None:
    """The images in `value`, or None when it holds something that is not an RGB image."""
    import numpy as np

    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return _pil(value)
    if isinstance(value, np.ndarray):
        return _numpy(value)
    if isinstance(value, torch.Tensor):
        return _torch(value)
    if isinstance(value, list | tuple) and value:
        parts = [read_images(item) for item in value]
        if any(part is None for part in parts):
            return None
        return _joined(parts, type(value))  # type: ignore[arg-type]
    return None


def _pil(image: Any) -> ImageBatch | None:
    import numpy as np
    from PIL import Image

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).clone()

    def restore(new: list[torch.Tensor]) -> Any:
        values = (new[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(values))

    return ImageBatch([pixels], restore)


def _numpy(array: Any) -> ImageBatch | None:
    import numpy as np

    if array.ndim not in (3, 4) or array.shape[-1] != 3 or array.dtype.kind not in "fu":
        return None
    batch = array if array.ndim == 4 else array[None]
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).float().div(scale).permute(0, 3, 1, 2)

    def restore(new: list[torch.Tensor]) -> Any:
        values = torch.stack(new).permute(0, 2, 3, 1)
        if scale != 1.0:
            values = (values.clamp(0, 1) * scale).round()
        out = values.numpy().astype(array.dtype)
        return out if array.ndim == 4 else out[0]

    return ImageBatch(list(tensor.clone()), restore)


def _torch(tensor: torch.Tensor) -> ImageBatch | None:
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3 or not tensor.is_floating_point():
        return None
    batch = (tensor if tensor.ndim == 4 else tensor[None]).detach().float().cpu()
    signed = bool(batch.numel()) and batch.min().item() < 0  # diffusers reads such tensors as [-1, 1]
    pixels = (batch + 1) / 2 if signed else batch.clone()

    def restore(new: list[torch.Tensor]) -> Any:
        values = torch.stack(new)
        values = values * 2 - 1 if signed else values
        values = values.to(device=tensor.device, dtype=tensor.dtype)
        return values if tensor.ndim == 4 else values[0]

    return ImageBatch(list(pixels), restore)


def _joined(parts: list[ImageBatch], container: type) -> ImageBatch:
    sizes = [len(part) for part in parts]

    def restore(new: list[torch.Tensor]) -> Any:
        out, start = [], 0
        for part, size in zip(parts, sizes, strict=True):
            out.append(part.restore(new[start : start + size]))
            start += size
        return container(out)

    return ImageBatch([pixels for part in parts for pixels in part.pixels], restore)


def clip_pixel_values(
    images: torch.Tensor, size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """CLIP preprocessing of float images in [0, 1] (B, 3, H, W).

    Shorter side to `size` (bicubic), centre crop, normalise with `mean` / `std`.
    """
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized[..., top : top + size, left : left + size]
    return (cropped - channel(mean, cropped)) / channel(std, cropped)


def channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """Per-channel constants shaped to broadcast over (B, C, H, W)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
