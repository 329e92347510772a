"""Same config + same seed = the same run: adapters, exported encoders and metrics, bit for bit."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from train.__main__ import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_base(tokenizer, folder):
    from transformers import CLIPConfig, CLIPModel

    from eval.synthetic import build_image_processor
    from train.tiny_clip import tiny_clip_configs

    torch.manual_seed(0)
    text_cfg, vision_cfg = tiny_clip_configs(tokenizer, 32, width=16, layers=1, projection_dim=16)
    clip_cfg = CLIPConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(), projection_dim=16)
    CLIPModel(clip_cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_image_processor(32).save_pretrained(folder)
    return folder


def train_and_export(base, run, export):
    overrides = [
        f"base_model={base}",
        f"output_dir={run}",
        "data.source=synthetic",
        "data.image_size=32",
        "data.train_size=16",
        "data.val_size=8",
        "data.batch_size=4",
        "data.num_workers=0",
        "optim.epochs=1",
        "lora.rank=2",
        "lora.dropout=0.2",
        "progress=false",
        "tensorboard=false",
    ]
    assert main(["safeclip", *overrides]) == 0
    assert main(["export", "--run", str(run), "--out", str(export)]) == 0


def encoder_file(path):
    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    config = json.loads(meta["safe_encoders.provenance"])["config"]
    config.pop("output_dir")  # the one setting that differs between the two runs
    meta["safe_encoders.provenance"] = config
    return load_file(str(path)), meta


def test_two_runs_of_the_same_config_and_seed_are_bitwise_equal(tokenizer, tmp_path, capsys):
    base = tiny_base(tokenizer, tmp_path / "base")
    torch.manual_seed(12345)  # whatever the caller's RNG state, the run depends on its seed only
    train_and_export(base, tmp_path / "a", tmp_path / "export-a")
    torch.manual_seed(999)
    train_and_export(base, tmp_path / "b", tmp_path / "export-b")
    a, b = (load_file(str(tmp_path / r / "best_adapters.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for kind in ("text", "vision"):
        (ta, ma), (tb, mb) = (encoder_file(tmp_path / f"export-{r}" / f"{kind}_encoder.safetensors") for r in "ab")
        assert ma == mb
        assert all(torch.equal(ta[k], tb[k]) for k in ta) and ta.keys() == tb.keys()

    def metrics(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in lines]  # wall time aside

    assert metrics("a") == metrics("b") and len(metrics("a")) >= 2
