"""`python -m train`: bad input ends with exit code 2 and a message naming the fix, not a traceback."""

import pytest

from tests.train.synthetic_builders import save_tiny_base, synthetic_run_overrides
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

    from safe_encoders.hysac import HySAC

    base = save_tiny_base(tokenizer, tmp_path / "base", width=32)
    run = tmp_path / "run"
    overrides = synthetic_run_overrides(base, run, "data.batch_size=8", "save_every_steps=0")
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
