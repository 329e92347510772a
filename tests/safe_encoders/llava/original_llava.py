"""Tiny models of the original `llava` package (`llava-torch` 1.2.2.post1, installed with `--no-deps`), built with
its real classes: `LlavaLlamaForCausalLM` from a tiny `LlavaConfig` whose `mm_vision_tower` is a tiny CLIP
vision folder written here, so that llava's own `CLIPVisionTower` loads it (`delay_load`, then `load_model`).

Images and prompts go through the package's own `process_images`, conversation template and
`tokenizer_image_token` (with the real LLaVA 1.5 tokenizer of the fixtures), as `llava.eval.run_llava` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.tiny_models import HUB_FIXTURES, tiny_vision_config

TOKENIZER_DIR = HUB_FIXTURES / "llava-hf__llava-1.5-7b-hf"
PINPOINTS = [[30, 60], [60, 30], [60, 60]]
# What `llava.model.builder.load_pretrained_model` sets up for LLaVA 1.5 and 1.6 (the authors' configs).
VARIANTS = {
    "1.5": dict(image_aspect_ratio="pad", mm_patch_merge_type="flat"),
    "1.6": dict(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad", image_grid_pinpoints=PINPOINTS),
}


_DECODER = dict(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
LANGUAGE_MODELS = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "mpt": dict(vocab_size=32000, d_model=16, n_heads=2, n_layers=1, max_seq_len=256),
}


def _classes(language: str):
    """llava's (config class, model class) for a language model."""
    from llava.model import (
        LlavaConfig,
        LlavaLlamaForCausalLM,
        LlavaMistralConfig,
        LlavaMistralForCausalLM,
        LlavaMptConfig,
        LlavaMptForCausalLM,
    )

    return {
        "llama": (LlavaConfig, LlavaLlamaForCausalLM),
        "mistral": (LlavaMistralConfig, LlavaMistralForCausalLM),
        "mpt": (LlavaMptConfig, LlavaMptForCausalLM),
    }[language]


def write_tower_folder(folder: Path, seed: int = 0, image_size: int = 30) -> Path:
    """A tiny CLIP vision tower as a transformers folder (weights + image processor), the `mm_vision_tower`."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(tiny_vision_config(image_size=image_size)).save_pretrained(folder)
    size = {"shortest_edge": image_size}
    CLIPImageProcessor(size=size, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def tiny_original_llava(
    tower_folder: Path,
    *,
    variant: str = "1.5",
    select_layer: int = -2,
    select_feature: str = "patch",
    load: bool = True,
    seed: int = 0,
    language: str = "llama",
):
    """llava's `LlavaLlamaForCausalLM` (a 1-layer Llama; or `language` "mistral" / "mpt": its Mistral and MPT
    classes) over the tower in `tower_folder`; `load=False` leaves the tower as llava builds it from a config
    (`delay_load`: no weights until `load_model()`)."""
    config_class, model_class = _classes(language)
    config = config_class(
        **LANGUAGE_MODELS[language], mm_vision_tower=str(tower_folder), mm_hidden_size=32,
        mm_vision_select_layer=select_layer, mm_vision_select_feature=select_feature, mm_projector_type="mlp2x_gelu",
        use_mm_proj=True, mm_use_im_start_end=False, mm_use_im_patch_token=False, **VARIANTS[variant],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = model_class(config)
    if "unpad" in config.mm_patch_merge_type:
        torch.nn.init.normal_(model.get_model().image_newline)  # llava leaves it torch.empty until trained
    if load:
        model.get_vision_tower().load_model()
    return model.eval()


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def image(seed: int = 0, size: tuple[int, int] = (40, 50)):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def prompt_and_pixels(model, images: list, question: str = "What is shown?") -> dict:
    """The model's inputs as llava runs them: its conversation template, `tokenizer_image_token`,
    `process_images` with the tower's own image processor (and `image_sizes` for any-resolution)."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    conversation = conv_templates["llava_v1"].copy()
    conversation.append_message(conversation.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conversation.append_message(conversation.roles[1], None)
    ids = tokenizer_image_token(conversation.get_prompt(), tokenizer(), IMAGE_TOKEN_INDEX, return_tensors="pt")
    pixels = process_images(images, model.get_vision_tower().image_processor, model.config)
    return {"input_ids": ids[None], "images": pixels, "image_sizes": [im.size for im in images]}


def logits(model, inputs: dict) -> torch.Tensor:
    """The next-token logits of llava's own forward (`prepare_inputs_labels_for_multimodal`, then Llama)."""
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


def greedy(model, inputs: dict, steps: int = 4) -> torch.Tensor:
    """Greedy answer ids through llava's own forward, step by step without a cache.

    llava-torch 1.2.2.post1's `generate` cannot run with transformers >= 4.38 (its `forward` takes no
    `cache_position` / `cache`), which is every version safe-encoders supports; this is the loop it would run.
    """
    ids = inputs["input_ids"]
    for _ in range(steps):
        step = logits(model, {**inputs, "input_ids": ids}).argmax(-1, keepdim=True)
        ids = torch.cat([ids, step], dim=1)
    return ids[:, inputs["input_ids"].shape[1] :]
