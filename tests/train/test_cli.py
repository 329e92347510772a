"""`python -m train`: bad input ends with exit code 2 and a message naming the fix, not a traceback."""

import pytest

from train.__main__ import main


def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("base_model: x\n")
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing best_adapters.safetensors" in err and "output_dir of `python -m train safeclip`" in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_visu_images_with_a_missing_caption_file(tmp_path, capsys):
    assert main(["visu-images", "--text", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "out")]) == 2
    assert f"ViSU file {tmp_path / 'absent.csv'} does not exist" in capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_export_of_a_hysac_run_matches_the_export_at_the_end_of_training(tokenizer, tmp_path, capsys):
    import json

    import torch
    from transformers import CLIPConfig, CLIPModel

    from eval.synthetic import build_image_processor
    from safe_encoders.hysac import HySAC
    from train.tiny_clip import tiny_clip_configs

    torch.manual_seed(0)
    base = tmp_path / "base"
    text_cfg, vision_cfg = tiny_clip_configs(tokenizer, 32, width=32, layers=1, projection_dim=32)
    clip_cfg = CLIPConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(), projection_dim=32)
    CLIPModel(clip_cfg).save_pretrained(base)
    tokenizer.save_pretrained(base)
    build_image_processor(32).save_pretrained(base)
    run = tmp_path / "run"
    overrides = [
        f"base_model={base}",
        f"output_dir={run}",
        "data.source=synthetic",
        "data.image_size=32",
        "data.train_size=16",
        "data.val_size=8",
        "data.batch_size=8",
        "data.num_workers=0",
        "optim.epochs=1",
        "save_every_steps=0",
        "lora.rank=2",
        "progress=false",
        "tensorboard=false",
    ]
    assert main(["hysac", *overrides]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "HySAC saved to" in capsys.readouterr().out
    trained = json.loads((run / "hysac_export" / "hysac_config.json").read_text())
    exported = json.loads((tmp_path / "out" / "hysac_config.json").read_text())
    assert exported["bounds"] is not None and exported["bounds"] == trained["bounds"]
    assert HySAC.from_pretrained(tmp_path / "out").bounds is not None

    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hub"), "--push-to-hub", "me/x"]) == 2
    assert "HySAC run" in capsys.readouterr().err and not (tmp_path / "hub").exists()
