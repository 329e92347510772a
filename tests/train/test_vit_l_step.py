"""One Safe-CLIP training step at the real ViT-L/14 size (config from fixtures, random weights, batch 2)."""

import pytest
import torch

from tests.tiny_models import HUB_FIXTURES, clip_tokenizer

FIXTURE = HUB_FIXTURES / "openai__clip-vit-large-patch14"


@pytest.mark.slow
def test_one_step_of_the_full_size_set_up():
    from transformers import CLIPConfig, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from train.config import load_config
    from train.losses import safe_clip_loss
    from train.model import CachedReferences, SafeClipModel

    cfg = load_config("vit-l-14")
    clip_cfg = CLIPConfig.from_pretrained(FIXTURE)
    assert (clip_cfg.text_config.hidden_size, clip_cfg.vision_config.hidden_size) == (768, 1024)
    tokenizer = clip_tokenizer()  # the CLIP BPE files (the same vocabulary and merges as openai's repo)
    torch.manual_seed(0)
    model = SafeClipModel(
        CLIPTextModelWithProjection(clip_cfg.text_config),
        CLIPVisionModelWithProjection(clip_cfg.vision_config),
        cfg.lora,
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("patch_embedding" in n for n in trainable) and not any("q_proj" in n for n in trainable)
    assert not any("projection" in n and "patch" not in n for n in trainable)
    safe = tokenizer(["a photo of a cat", "a dog on a sofa"], padding="max_length", return_tensors="pt")
    unsafe = tokenizer(
        ["a photo of a cat covered in blood", "a dog next to a gun"], padding="max_length", return_tensors="pt"
    )
    batch = {
        "index": torch.arange(2),
        "safe_input_ids": safe["input_ids"],
        "safe_attention_mask": safe["attention_mask"],
        "unsafe_input_ids": unsafe["input_ids"],
        "unsafe_attention_mask": unsafe["attention_mask"],
        "safe_pixel_values": torch.randn(2, 3, 224, 224),
        "unsafe_pixel_values": torch.randn(2, 3, 224, 224),
    }
    refs = CachedReferences.build(model, [batch], 2)
    assert refs.text.shape == (2, 768) and refs.image.shape == (2, 768)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    emb = model(batch)
    loss, terms = safe_clip_loss(
        **emb, ref_text_safe=refs.text, ref_image_safe=refs.image, weights=cfg.loss.safe_clip_weights()
    )
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values())
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert len(changed) == len(before)
