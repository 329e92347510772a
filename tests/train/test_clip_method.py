"""The ``clip`` method: CLIP pre-training (every weight and the temperature train) through the same loop as
Safe-CLIP and HySAC, exported as a transformers ``CLIPModel`` folder (the demo pre-trains with it)."""

import json

import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from eval.data.synthetic import build_image_processor
from tests.train.synthetic_builders import encoded_worlds
from train.config import load_config
from train.data import stack_encoded
from train.loop import run_training
from train.methods import METHODS
from train.model import ContrastiveClipModel, load_base_encoders
from train.tiny_clip import tiny_clip


def test_clip_loss_pairs_each_text_with_its_own_image(tokenizer):
    """Safe and unsafe pairs are positives of their own image only: with every text equal to its own image
    (orthonormal rows) the loss is ~0; pairing the safe texts with the unsafe images instead is not."""
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1)
    model = ContrastiveClipModel(text, vision, logit_scale=100.0)
    basis = torch.eye(8)
    emb = {"text_safe": basis[:4], "image_safe": basis[:4], "text_unsafe": basis[4:], "image_unsafe": basis[4:]}
    cfg = load_config(None, ["method=clip"])
    loss, terms = METHODS["clip"].loss(cfg, model, emb, {}, None)
    assert loss.item() < 1e-6
    assert terms["logit_scale"].item() == pytest.approx(100.0)
    crossed = {**emb, "image_safe": basis[4:], "image_unsafe": basis[:4]}
    assert METHODS["clip"].loss(cfg, model, crossed, {}, None)[0].item() > 50


def test_clip_run_trains_every_weight_and_exports_a_clip_model(tokenizer, tmp_path):
    train_set, val_set = encoded_worlds(tokenizer, 48, 24)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "method=clip",
            "data.batch_size=16",
            "optim.epochs=3",
            "optim.lr=5e-3",
            "progress=false",
            "tensorboard=false",
        ],
    )
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=32)
    processor = build_image_processor(32)
    model = METHODS["clip"].build(cfg, text, vision, tokenizer, processor)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_training(cfg, model, train_set, None, stack_encoded, resume=False)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []  # both towers whole, the projections and the temperature
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]  # epoch records carry no loss (no validation set)
    first, last = (sum(r["loss"] for r in steps if r["epoch"] == e) for e in (0, 2))
    assert last < first

    out = tmp_path / "pretrained"
    METHODS["clip"].export(model, out, cfg, None, None)
    clip = CLIPModel.from_pretrained(out).eval()
    assert clip.logit_scale.item() == pytest.approx(model.log_logit_scale.item())
    model.eval()
    t = val_set.tensors
    with torch.no_grad():
        expected = model(t)
        both = clip(
            input_ids=t["safe_input_ids"], attention_mask=t["safe_attention_mask"], pixel_values=t["safe_pixel_values"]
        )
        norm = torch.nn.functional.normalize  # CLIPModel returns unit-length embeddings
        assert torch.allclose(both.text_embeds, norm(expected["text_safe"], dim=-1), atol=1e-5)
        assert torch.allclose(both.image_embeds, norm(expected["image_safe"], dim=-1), atol=1e-5)
        text2, vision2 = load_base_encoders(str(out))  # what Safe-CLIP / HySAC fine-tuning starts from
        image = vision2.eval()(pixel_values=t["unsafe_pixel_values"]).image_embeds
        assert torch.allclose(image, expected["image_unsafe"], atol=1e-5)
        ids, mask = t["unsafe_input_ids"], t["unsafe_attention_mask"]
        assert torch.allclose(text2.eval()(input_ids=ids, attention_mask=mask).text_embeds, expected["text_unsafe"])
    caption = "a photo"
    assert AutoTokenizer.from_pretrained(out)(caption).input_ids == tokenizer(caption).input_ids
