"""A tiny stand-in for what the offline demo writes to out/demo, made with the demo's own builders.

The real demo trains for minutes; here every model is random but built the same way and written with the
same functions (`train.demo.write_app_inputs`, `HySAC.save_pretrained`, `export_encoder`), so the app
reads the same layout (`safe_encoders.app.DemoLayout`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def demo_world(images: int):
    """The synthetic world whose images the tiny demo folder holds."""
    from eval.data.synthetic import SyntheticWorld

    return SyntheticWorld(images, seed=2, image_size=32, distinct=True)


def tiny_demo_folder(root: Path, *, images: int = 6) -> Path:
    """`root` laid out as out/demo: the Safe-CLIP export, the HySAC export (with bounds from the world's own
    root distances, as the demo takes them from its validation set), the tiny SD pipeline and the images."""
    from eval.data.synthetic import build_image_processor, build_tokenizer
    from safe_encoders import export_encoder
    from safe_encoders.app import DemoLayout
    from safe_encoders.hysac import HySAC, compute_bounds
    from safe_encoders.hysac.classify import embed_images, embed_texts
    from train.demo import write_app_inputs
    from train.demo_world import plain_text_encoder, tiny_sd_pipeline
    from train.tiny_clip import tiny_clip

    layout = DemoLayout(root)
    tokenizer = build_tokenizer(24)
    world = demo_world(images)
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, heads=2, projection_dim=16)
    hysac = HySAC(text, vision, tokenizer=tokenizer, image_processor=build_image_processor(32)).eval()
    safe_texts, unsafe_texts = zip(*(world.captions(i) for i in range(len(world))), strict=True)
    with torch.no_grad():
        points = {
            "S": embed_texts(hysac, list(safe_texts)),
            "U": embed_texts(hysac, list(unsafe_texts)),
            "V": embed_images(hysac, [world[i].safe_image for i in range(len(world))]),
            "G": embed_images(hysac, [world[i].unsafe_image for i in range(len(world))]),
        }
    hysac.bounds = compute_bounds({group: hysac.root_distance(x) for group, x in points.items()})
    hysac.save_pretrained(layout.hysac)

    text_encoder = plain_text_encoder(hysac.text)
    safe = copy.deepcopy(text_encoder)
    torch.manual_seed(1)
    with torch.no_grad():  # a "fine-tuned" encoder: the same architecture, other weights
        for param in safe.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    layout.safe_clip.parent.mkdir(parents=True, exist_ok=True)
    export_encoder(safe, layout.safe_clip, base_model="safe-encoders/tiny-clip-synthetic")
    write_app_inputs(root, tiny_sd_pipeline(text_encoder, tokenizer), world, count=images)
    layout.check()
    return root


def trusted_demo_folder(root, trust_dir, **kwargs):
    """`tiny_demo_folder(root)` whose Safe-CLIP export the user trusts in `trust_dir`, as a user would after the
    demo (`safe-encoders trust out/demo/exported/text_encoder.safetensors`)."""
    import pytest

    from safe_encoders import trust_checkpoint
    from safe_encoders.app import DemoLayout

    tiny_demo_folder(root, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAFE_ENCODERS_TRUST_DIR", str(trust_dir))
        trust_checkpoint(DemoLayout(root).safe_clip)
    return root
