"""Safe Latent Diffusion from wherever the installed diffusers keeps it, and the README's SLD example."""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import pytest
import torch

from safe_encoders import export_encoder, is_safe, make_safe, swap_report
from safe_encoders.diffusers import SLDUnavailableError, sld_classes
from safe_encoders.diffusers import sld as sld_module
from tests.tiny_models import tiny_sd_pipeline, tiny_text_encoder

README = Path(__file__).resolve().parents[3] / "README.md"


def test_sld_classes_come_from_the_installed_diffusers():
    import diffusers

    pipeline_cls, config = sld_classes()
    assert pipeline_cls is diffusers.StableDiffusionPipelineSafe  # what the installed diffusers exports
    assert config.STRONG == {
        "sld_warmup_steps": 7,
        "sld_guidance_scale": 2000,
        "sld_threshold": 0.025,
        "sld_momentum_scale": 0.5,
        "sld_mom_beta": 0.7,
    }
    from safe_encoders.diffusers import SafetyConfig, StableDiffusionPipelineSafe

    assert (StableDiffusionPipelineSafe, SafetyConfig) == (pipeline_cls, config)


def test_the_old_location_is_tried_and_a_missing_sld_is_a_clear_error(monkeypatch):
    # diffusers 0.42 keeps SLD only under deprecated: the old path alone finds nothing
    monkeypatch.setattr(sld_module, "SLD_MODULES", ("diffusers.pipelines.stable_diffusion_safe",))
    with pytest.raises(SLDUnavailableError, match=r"diffusers \d.*provides no StableDiffusionPipelineSafe"):
        sld_classes()
    with pytest.raises(ImportError, match=r"tried diffusers\.pipelines\.stable_diffusion_safe"):
        sld_classes()
    monkeypatch.setattr(
        sld_module, "SLD_MODULES", ("nowhere.sld", "diffusers.pipelines.deprecated.stable_diffusion_safe")
    )
    module = importlib.import_module("diffusers.pipelines.deprecated.stable_diffusion_safe")
    assert sld_classes() == (module.StableDiffusionPipelineSafe, module.SafetyConfig)


def _readme_sld_snippet() -> str:
    """The README's SLD lines: from the '# Combine with Safe Latent Diffusion' comment to the next comment."""
    text = README.read_text(encoding="utf-8")
    start = text.index("# Combine with Safe Latent Diffusion")
    return text[start : text.index("\n\n#", start)]


def test_readme_sld_example_runs_on_a_tiny_pipeline(tmp_path):
    snippet = _readme_sld_snippet()
    assert "from safe_encoders.diffusers import SafetyConfig, StableDiffusionPipelineSafe" in snippet
    hub_id = re.search(r'from_pretrained\("([^"]+)"\)', snippet).group(1)
    folder = tmp_path / "tiny-sd"
    tiny_sd_pipeline("v1", sld=True).save_pretrained(folder)
    safe_file = export_encoder(tiny_text_encoder(seed=123), tmp_path / "text.safetensors")
    # the README's code as written; only the Hub id becomes the tiny folder and make_safe gets the tiny encoder
    code = snippet.replace(f'"{hub_id}"', repr(str(folder)))
    code += "\nsld_pipe = sld"  # keep the pipeline for the checks below
    scope = {"make_safe": functools.partial(make_safe, checkpoint=str(safe_file)), "prompt": "a photo of a cat"}
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), scope)  # our own README
    pipe = scope["sld_pipe"]
    assert type(pipe).__name__ == "StableDiffusionPipelineSafe" and is_safe(pipe)
    assert swap_report(pipe)["pipe.text_encoder"]["checkpoint"] == str(safe_file)
    assert scope["image"].size == (pipe.vae_scale_factor * pipe.unet.config.sample_size,) * 2
