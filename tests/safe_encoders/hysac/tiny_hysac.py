"""Tiny random HySAC models and authors'-release-shaped files for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_models import save_clip_repo, tiny_clip_model

LORA_TARGETS = ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"]


def tiny_hysac(seed: int = 0, **kwargs):
    """A HySAC on a tiny random CLIPModel (text 32 wide, vision 30 px, projection 16)."""
    from safe_encoders.hysac import HySAC

    return HySAC.from_clip_model(tiny_clip_model(seed), **kwargs).eval()


def tiny_base_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIPModel saved as the official repos are (config.json + model.safetensors)."""
    return save_clip_repo(tiny_clip_model(seed), folder)


def peft_towers(seed: int = 0, *, rank: int = 4, lora_alpha: float = 2.0):
    """The tiny base CLIP's towers wrapped by peft, with random (non-zero) LoRA factors."""
    from peft import LoraConfig, get_peft_model

    base = tiny_hysac(seed)
    torch.manual_seed(seed + 100)
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0, bias="none")
    text, vision = get_peft_model(base.text, config), get_peft_model(base.vision, config)
    with torch.no_grad():
        for tower in (text, vision):
            for name, param in tower.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.3)
    return text.eval(), vision.eval()


RELEASE_SCALARS = {"curv": 0.8, "textual_alpha": 0.5, "visual_alpha": 0.25, "logit_scale": 20.0}


def release_state(text, vision, *, prefixes=("textual.", "visual."), scalars=None) -> dict[str, torch.Tensor]:
    """A state dict laid out like the authors' `hysac_model.pth` (log-space scalars, given here as logs)."""
    state = {prefixes[0] + k: v.clone() for k, v in text.state_dict().items()}
    state.update({prefixes[1] + k: v.clone() for k, v in vision.state_dict().items()})
    for name, value in (scalars or RELEASE_SCALARS).items():
        state[name] = torch.tensor(float(value)).log()
    state["pixel_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    state["pixel_std"] = torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return state


def expected_points(text, vision, input_ids, pixel_values, scalars=None):
    """What the release should encode to: the unmerged peft towers, scaled by alpha, lifted by expmap0."""
    from safe_encoders.hysac import lorentz

    scalars = scalars or RELEASE_SCALARS
    with torch.no_grad():
        t = text(input_ids=input_ids).text_embeds * scalars["textual_alpha"]
        v = vision(pixel_values=pixel_values).image_embeds * scalars["visual_alpha"]
    return lorentz.expmap0(t, scalars["curv"]), lorentz.expmap0(v, scalars["curv"])


def sample_inputs(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 49000, (n, 7), generator=g)
    input_ids[:, -1] = 49407  # eos
    pixel_values = torch.randn(n, 3, 30, 30, generator=g)
    return input_ids, pixel_values
