"""Images in and out of the gate: any layout diffusers takes or returns <-> float pixels in [0, 1].

`read_images` turns PIL images, numpy arrays ((H, W, C) / (B, H, W, C), uint8, float in [0, 1], or in
[-1, 1] when a value is negative, as diffusers reads them),
torch tensors ((C, H, W) / (B, C, H, W), in [0, 1], or in [-1, 1] as diffusers reads tensors with
negative values) and (nested) lists of them into a list of (3, H, W) float tensors, plus a function
that writes changed pixels back in the caller's layout, dtype and device. Anything else (latents with
4 channels, image embeddings, unknown types) is None: the gate cannot look at it. `read_input_images`
reads a pipeline's image input exactly as diffusers' image processor will (refusing what it would not
read as RGB pixels, e.g. an RGBA image, which img2img uses as latents).
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
    signed = scale == 1.0 and bool(tensor.numel()) and tensor.min().item() < 0  # diffusers reads it as [-1, 1]
    tensor = (tensor + 1) / 2 if signed else tensor

    def restore(new: list[torch.Tensor]) -> Any:
        values = torch.stack(new).permute(0, 2, 3, 1)
        values = values * 2 - 1 if signed else values
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


# ------------------------------------------------------------------------------ inputs, as diffusers reads them


@dataclass(frozen=True)
class InputReading:
    """How a pipeline's image processor reads one image input (diffusers' `VaeImageProcessor`).

    `convert_rgb`: PIL images are converted to RGB first (else their own bands are read). `latent_channels`:
    a tensor with that many channels is taken as latents, not pixels. `normalize`: pixels in [0, 1] are mapped
    to [-1, 1] (values below 0 switch that off: the input is then read as [-1, 1])."""

    convert_rgb: bool = False
    latent_channels: int | None = 4
    normalize: bool = True


def input_reading(pipe: Any, name: str) -> InputReading:
    """The reading of input `name` (`image` -> `pipe.image_processor`, `control_image` -> its control processor)."""
    processor = getattr(pipe, {"control_image": "control_image_processor"}.get(name, "image_processor"), None)
    config = getattr(processor, "config", None)
    if name == "ip_adapter_image" or config is None:  # CLIP's feature extractor converts to RGB
        return InputReading(convert_rgb=True, latent_channels=None, normalize=False)
    return InputReading(
        convert_rgb=bool(getattr(config, "do_convert_rgb", False)),
        latent_channels=getattr(config, "vae_latent_channels", 4),
        normalize=bool(getattr(config, "do_normalize", True)),
    )


def read_input_images(value: Any, reading: InputReading) -> tuple[ImageBatch | None, str]:
    """The images the pipeline will see in `value` as (3, H, W) pixels in [0, 1], or None and why not.

    Mirrors `VaeImageProcessor.preprocess`: PIL -> `array / 255` of its own bands (RGBA has 4 channels, 16-bit
    and palette images are not RGB); numpy and torch values are taken as they are (no division by 255: integer
    arrays are refused); a batch whose smallest value is below 0 is read as [-1, 1], else as [0, 1]. A batch
    with the VAE's latent channel count is used as latents by the pipeline: refused, like anything that is not
    three channels of in-range pixels."""
    import numpy as np

    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        return None, "it is an empty list"
    arrays = []
    for item in items:
        if hasattr(item, "convert") and hasattr(item, "mode"):  # PIL
            if reading.convert_rgb:
                item = item.convert("RGB")
            if item.mode != "RGB":
                bands = len(item.getbands())
                return None, (
                    f"it is a PIL image in mode {item.mode!r} ({bands} band(s)); the pipeline reads its bands as they "
                    f"are{' (4 channels: as latents)' if bands == reading.latent_channels else ''}, not as RGB"
                )
            arrays.append(torch.from_numpy(np.asarray(item, dtype=np.float32) / 255.0).permute(2, 0, 1)[None])
        elif isinstance(item, np.ndarray | torch.Tensor):
            tensor = torch.from_numpy(np.ascontiguousarray(item)) if isinstance(item, np.ndarray) else item.detach()
            if not tensor.is_floating_point():
                return None, f"it holds {tensor.dtype} values; the pipeline reads them without dividing by 255"
            if isinstance(item, np.ndarray):  # numpy is channels-last
                tensor = tensor.movedim(-1, -3) if tensor.ndim in (3, 4) else tensor
            tensor = tensor if tensor.ndim == 4 else tensor[None] if tensor.ndim == 3 else None
            if tensor is None:
                return None, f"it has {item.ndim} dimensions, not (C, H, W) or (B, C, H, W)"
            arrays.append(tensor.float().cpu())
        else:
            return None, f"it is not an image the gate can read ({type(item).__name__})"
    channels = {array.shape[1] for array in arrays}
    if channels != {3}:
        if reading.latent_channels in channels:
            return None, f"it has {reading.latent_channels} channels, so the pipeline uses it as latents, not pixels"
        return None, f"it has {sorted(channels)} channels, not 3 (RGB)"
    if len({array.shape[-2:] for array in arrays}) > 1:
        return None, "its images have different sizes"
    batch = torch.cat(arrays)
    if not bool(torch.isfinite(batch).all()):
        return None, "it holds values that are not finite"
    low, high = batch.min().item(), batch.max().item()
    signed = reading.normalize and low < 0  # diffusers then reads the whole batch as [-1, 1]
    if (signed and not -1 - 1e-4 <= low <= high <= 1 + 1e-4) or (not signed and not -1e-4 <= low <= high <= 1 + 1e-4):
        return None, f"its values span [{low:.4g}, {high:.4g}], outside the range the pipeline reads as pixels"
    pixels = ((batch + 1) / 2 if signed else batch).clamp(0, 1)
    original = read_images(value)
    if original is None or len(original) != len(pixels):
        return None, "the gate cannot write a changed image back in its layout"
    return ImageBatch(list(pixels), restore=original.restore), ""
