"""Tiny random models built from configs (real transformers / diffusers classes) for offline tests.

Also: where the real fixture files live (`HUB_FIXTURES`, vendored in tests/fixtures; the large data files of
../shared/fixtures/data, which only some tests need, with the skip reason that marks them), and
`write_hub_cache`, which lays files out exactly as huggingface_hub's cache does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"
# The small real files (configs, tokenizers) are vendored: see tests/fixtures/SOURCES.md.
HUB_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"
DATA_FIXTURES = FIXTURES / "data"
# The only skip a plain clone may show: tests/conftest.py fails a strict run (CI) on any skip without it.
DATA_SKIP_REASON = "needs a large data file of ../shared/fixtures/data"


def data_file(name: str) -> Path:
    """A file of ../shared/fixtures/data (I2P, COCO-30k, Q16 prompts), or skip the test when it is absent."""
    path = DATA_FIXTURES / name
    if not path.exists():
        pytest.skip(f"{DATA_SKIP_REASON}: {path} is absent")
    return path


TOKENIZER_DIR = HUB_FIXTURES / "CompVis__stable-diffusion-v1-4" / "tokenizer"


def hub_config(repo: str, subfolder: str = "") -> dict:
    """A real config.json from the fixtures, e.g. hub_config("CompVis/stable-diffusion-v1-4", "text_encoder")."""
    folder = HUB_FIXTURES / repo.replace("/", "__") / subfolder
    return json.loads((folder / "config.json").read_text())


def clip_tokenizer():
    """The real CLIP BPE tokenizer (vocab + merges from the SD v1.4 repo)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)


def _tiny_tower(layers: int, hidden: int, act: str) -> dict:
    """The transformer shape the tiny text and vision towers share: width, MLP size, depth, heads, activation."""
    return dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2 + 5,
        num_hidden_layers=layers,
        num_attention_heads=4,
        hidden_act=act,
    )


def tiny_text_config(*, layers: int = 3, hidden: int = 32, act: str = "quick_gelu", projection: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **_tiny_tower(layers, hidden, act), projection_dim=projection, vocab_size=49408, max_position_embeddings=77
    )


def tiny_vision_config(
    *, layers: int = 2, hidden: int = 32, image_size: int = 30, patch_size: int = 10, act: str = "quick_gelu"
):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        **_tiny_tower(layers, hidden, act), projection_dim=16, image_size=image_size, patch_size=patch_size
    )


def tiny_clip_model(seed: int = 0, *, text_layers: int = 3, act: str = "quick_gelu", hidden: int = 32):
    """A tiny random `CLIPModel` (text + vision), deterministic from `seed`."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=tiny_text_config(layers=text_layers, act=act, hidden=hidden).to_dict(),
        vision_config=tiny_vision_config(act=act).to_dict(),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def save_clip_repo(model, folder: Path) -> Path:
    """Save a CLIPModel as the official releases are laid out (config.json + model.safetensors)."""
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_text_encoder(seed: int = 0, *, layers: int = 3, act: str = "quick_gelu", hidden: int = 32, projection=False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(tiny_text_config(layers=layers, act=act, hidden=hidden)).eval()


def _tiny_unet(cross_attention_dim: int, *, xl_text_embeds: int | None = None, linear_projection: bool = False):
    from diffusers import UNet2DConditionModel

    extra = {}
    if xl_text_embeds is not None:
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + xl_text_embeds,
        )
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=4,
        use_linear_projection=linear_projection,
        **extra,
    )


def _tiny_vae(blocks: int = 1):
    """A tiny AutoencoderKL; each block after the first halves the image side in latent space."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 32)[:blocks],
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )


def tiny_sd_pipeline(variant: str = "v1", *, seed: int = 0, sld: bool = False, vae_blocks: int = 1):
    """A tiny random Stable Diffusion pipeline shaped like the real ones.

    v1: CLIP text encoder with quick_gelu (ViT-L/14-like); v2: gelu and one layer fewer than the
    3-layer "full" tower (SD 2 drops OpenCLIP ViT-H's last layer); xl: a ViT-L-like `text_encoder`
    plus a wider gelu `text_encoder_2` with projection (the bigG stand-in). `sld=True` builds
    diffusers' `StableDiffusionPipelineSafe` (v1 only). `vae_blocks=2` gives a VAE that halves
    the image side, like SD's 8x smaller latents (cheaper at larger image sizes).
    """
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionPipelineSafe,
        StableDiffusionXLPipeline,
    )

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    if variant == "xl":
        text_encoder = tiny_text_encoder(seed, layers=3)
        text_encoder_2 = tiny_text_encoder(seed + 1, layers=2, act="gelu", hidden=48, projection=True)
        torch.manual_seed(seed)
        return StableDiffusionXLPipeline(
            vae=_tiny_vae(vae_blocks),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=clip_tokenizer(),
            unet=_tiny_unet(32 + 48, xl_text_embeds=16, linear_projection=True),
            scheduler=EulerDiscreteScheduler(num_train_timesteps=100),
            force_zeros_for_empty_prompt=True,
        )
    if variant == "v1":
        text_encoder = tiny_text_encoder(seed, layers=3)
    elif variant == "v2":
        text_encoder = tiny_text_encoder(seed, layers=2, act="gelu")
    else:
        raise ValueError(variant)
    torch.manual_seed(seed)
    components = dict(
        vae=_tiny_vae(vae_blocks),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_tiny_unet(32, linear_projection=variant == "v2"),
        scheduler=DDIMScheduler(num_train_timesteps=100, steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    cls = StableDiffusionPipelineSafe if sld else StableDiffusionPipeline
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str = "a photo of a cat", *, seed: int = 0, steps: int = 2, **kwargs) -> torch.Tensor:
    """Run the pipeline deterministically and return the images as a tensor."""
    generator = torch.Generator("cpu").manual_seed(seed)
    size = 16
    out = pipe(
        prompt, num_inference_steps=steps, generator=generator, height=size, width=size, output_type="pt", **kwargs
    )
    images = out.images
    # StableDiffusionPipelineSafe ignores output_type="pt" and returns numpy
    return images if isinstance(images, torch.Tensor) else torch.as_tensor(images)


def write_hub_cache(
    cache_dir: Path,
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    revision: str = "main",
    repo_type: str = "model",
) -> str:
    """Lay `files` out as huggingface_hub's cache does: blobs/, snapshots/<commit>/, refs/<revision>.

    Returns the (made-up, deterministic) commit hash of the snapshot.
    """
    repo_dir = cache_dir / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    contents = {name: (src if isinstance(src, bytes) else Path(src).read_bytes()) for name, src in files.items()}
    commit = hashlib.sha1(json.dumps(sorted((n, hashlib.sha256(c).hexdigest()) for n, c in contents.items())).encode())
    commit_hash = commit.hexdigest()
    snapshot = repo_dir / "snapshots" / commit_hash
    for name, content in contents.items():
        blob = blobs / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit_hash)
    return commit_hash
