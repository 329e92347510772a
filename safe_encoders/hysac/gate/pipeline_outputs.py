"""What the pipeline gate does to a call's output: every image field checked and `image_policy` applied,
rows of blanked prompts blacked out, latent output decoded with the pipeline's VAE to be checked."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import torch

from ...errors import UnsafeContentError, UnsupportedModelError
from .core import IMAGE_ACTIONS, GateHandle, GateReport, InputCheck, allow_unchecked, apply_image_policy
from .images import ImageBatch, read_images

# The name `allow_unchecked` takes for latent output that cannot be decoded to be checked.
LATENT_OUTPUT = "output_latents"


def check_output(
    handle: GateHandle, report: GateReport, pipe: Any, output: Any, blank: list[int], output_type: str | None
) -> Any:
    """Check (and treat) every image field of the output: `images` and e.g. SLD's `unsafe_images`."""
    as_tuple = isinstance(output, tuple)
    if as_tuple:
        names, values = [f"output[{i}]" for i in range(len(output))], list(output)
    elif is_dataclass(output):
        names = [f"output.{f.name}" for f in fields(output)]
        values = [getattr(output, f.name) for f in fields(output)]
    else:
        raise UnsupportedModelError(f"safety gate: cannot read a pipeline output of type {type(output).__name__}.")
    flags: list[bool] | None = None
    for index, (name, value) in enumerate(zip(names, values, strict=True)):
        if value is None or (index > 0 and read_images(value) is None):
            continue  # flag lists and other fields
        if index == 0 and output_type == "latent":
            new_value, new_flags = _check_latents(handle, report, pipe, name, value, blank)
        else:
            new_value, new_flags = _check_images(handle, report, name, value, blank if index == 0 else [])
        values[index] = new_value
        if index == 0:
            flags = new_flags
        if index == 0 or name == "output.images":
            report.image_action = report.inputs[-1].action
            report.images = report.inputs[-1].verdicts
    if as_tuple:
        if flags is not None and len(values) > 1 and (values[1] is None or isinstance(values[1], list)):
            values[1] = _merge_flags(values[1], flags)
        return tuple(values)
    for f, value in zip(fields(output), values, strict=True):
        setattr(output, f.name, value)
    if flags is not None and hasattr(output, "nsfw_content_detected"):
        output.nsfw_content_detected = _merge_flags(output.nsfw_content_detected, flags)
    return output


def _check_images(
    handle: GateHandle, report: GateReport, name: str, value: Any, blank: list[int]
) -> tuple[Any, list[bool] | None]:
    batch = read_images(value)
    if batch is None:
        if handle.gate.image_policy == "off" and not blank:
            report.add(InputCheck(name, "unchecked", "off"))
            return value, None
        # An image policy is on (or rows must be blanked) and the output cannot be read: fail closed.
        report.add(InputCheck(name, "unchecked", "refused", note=f"unreadable {type(value).__name__}"))
        raise UnsafeContentError(
            f"safety gate: the pipeline returned {name} as {type(value).__name__}, which the gate cannot read, so "
            "it cannot be checked; the output was withheld. Use output_type 'pil', 'np' or 'pt'.",
            report,
        )
    flags = torch.zeros(len(batch), dtype=torch.bool)
    if handle.gate.image_policy == "off":
        report.add(InputCheck(name, "unchecked", "off", note="image_policy='off'"))
    else:
        _, flags = apply_image_policy(handle, report, name, batch, "the output was withheld")
        flags = flags.clone()
    for i in blank:
        batch.pixels[i] = torch.zeros_like(batch.pixels[i])
        flags[i] = True
    changed = (handle.gate.image_policy in ("blur", "black") and bool(flags.any())) or bool(blank)
    return (batch.restore(batch.pixels) if changed else value), flags.tolist()


def _check_latents(
    handle: GateHandle, report: GateReport, pipe: Any, name: str, latents: Any, blank: list[int]
) -> tuple[Any, list[bool] | None]:
    """output_type="latent": decode with the pipeline's VAE, check; unsafe latents are refused unless flagged."""
    gate = handle.gate
    if blank:
        latents = latents.clone()
        latents[blank] = 0
    if gate.image_policy == "off":
        report.add(InputCheck(name, "unchecked", "off", note="latent output; image_policy='off'"))
        return latents, [i in blank for i in range(len(latents))] if blank else None
    pixels = decode_latents(pipe, latents)
    if pixels is None:
        _unreadable_latents(handle, report, name, latents)
        return latents, None
    batch = ImageBatch(list(pixels), restore=lambda new: new)
    treat = gate.image_policy in ("blur", "black")  # a latent cannot be blurred faithfully: withheld instead
    consequence = "the output was withheld"
    if treat:
        consequence = (
            f"output_type='latent' cannot be {IMAGE_ACTIONS[gate.image_policy]}, so the output was withheld (use "
            "output_type 'pil', 'np' or 'pt' to get treated images)"
        )
    check, flags = apply_image_policy(
        handle, report, name, batch, consequence, policy="block" if treat else gate.image_policy
    )
    check.note = (check.note + "; " if check.note else "") + "latents decoded with the pipeline's VAE to be checked"
    flags = flags.clone()
    flags[blank] = True
    return latents, flags.tolist()


def _unreadable_latents(handle: GateHandle, report: GateReport, name: str, latents: Any) -> None:
    why = f"the latents (shape {tuple(getattr(latents, 'shape', ()))}) cannot be decoded by the gate"
    if LATENT_OUTPUT in handle.gate.allow_unchecked:
        allow_unchecked(report, name, why)
        return
    report.add(InputCheck(name, "unchecked", "refused", note=why))
    raise UnsafeContentError(
        f"safety gate: output_type='latent' with an image policy on, but {why}, so the images cannot be checked; "
        f"the output was withheld. Use output_type 'pil', 'np' or 'pt', or opt out with "
        f"SafetyGate(..., allow_unchecked=({LATENT_OUTPUT!r},)).",
        report,
    )


@torch.no_grad()
def decode_latents(pipe: Any, latents: Any) -> torch.Tensor | None:
    """Decode (B, C, h, w) latents as SD / SD 2 / SDXL / SD 3 pipelines do; pixels (B, 3, H, W) in [0, 1] on the
    CPU, or None when the pipeline has no VAE or the latents do not fit it (e.g. Flux's packed latents)."""
    vae = getattr(pipe, "vae", None)
    config = getattr(vae, "config", None)
    channels = getattr(config, "latent_channels", None)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or channels is None or latents.shape[1] != channels:
        return None
    scaling = getattr(config, "scaling_factor", 1.0) or 1.0
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    parameter = next(vae.parameters())
    values = latents.to(device=parameter.device, dtype=torch.float32)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean, dtype=values.dtype, device=values.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=values.dtype, device=values.device).view(1, -1, 1, 1)
        values = values * std_t / scaling + mean_t
    else:
        values = values / scaling + (getattr(config, "shift_factor", None) or 0.0)
    images = vae.decode(values.to(parameter.dtype), return_dict=False)[0]
    return (images.float().cpu() / 2 + 0.5).clamp(0, 1)


def _merge_flags(existing: list[bool] | None, flags: list[bool]) -> list[bool]:
    if existing is None:
        return list(flags)
    if isinstance(existing, bool):  # SLD's pipeline returns one bool (its loop variable) instead of a list
        existing = [existing] * len(flags)
    return [bool(a) or bool(b) for a, b in zip(existing, flags, strict=True)]
