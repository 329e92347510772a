"""`python -m train`: bad input ends with exit code 2 and a message naming the fix, not a traceback."""

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
