"""Both command lines end a user error with one line naming the argument, its value and the fix; exit 2."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest
import torch

from eval.__main__ import main as eval_main
from safe_encoders.cli.errors import one_line
from train.__main__ import main as train_main


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.csv"
    path.write_text("prompt,seed\na cat,1\n")
    return path


def t2i(model: str, prompts: Path, out: Path) -> list[str]:
    return ["t2i", "--model", model, "--prompts", str(prompts), "--conditions", "sd", "--out", str(out)]


def test_eval_t2i_with_a_model_path_that_does_not_exist(tmp_path, prompts, capsys):
    assert eval_main([*t2i("/nonexistent/sd", prompts, tmp_path / "out"), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: --model /nonexistent/sd: ")
    assert "neither a valid local path nor a valid repo id" in line and "pass an existing local" in line


def test_eval_t2i_with_a_folder_that_is_not_a_pipeline(tmp_path, prompts, capsys):
    (tmp_path / "notsd").mkdir()
    assert eval_main([*t2i(str(tmp_path / "notsd"), prompts, tmp_path / "out"), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --model {tmp_path / 'notsd'}: ") and "model_index.json" in line


def test_eval_t2i_with_a_missing_prompt_file(tmp_path, capsys):
    assert eval_main(t2i("x/y", tmp_path / "absent.csv", tmp_path / "out")) == 2
    assert (
        _error_line(capsys)
        == f"error: --prompts {tmp_path / 'absent.csv'}: prompt file {tmp_path / 'absent.csv'} does not exist"
    )


def test_a_refused_pickle_is_one_line_and_never_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release").mkdir()
    torch.save({"a": _Exploit()}, tmp_path / "release" / "hysac_model.pth")
    argv = ["hysac", "--model", f"x={tmp_path / 'release'}", "--synthetic", "4", "--out", str(tmp_path / "out")]
    assert eval_main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --model x={tmp_path / 'release'}: Refusing ") and "safetensors" in line
    assert not (tmp_path / "pwned").exists()


def test_train_with_a_base_model_that_does_not_exist(tmp_path, capsys):
    argv = ["safeclip", "base_model=/nonexistent/clip", f"output_dir={tmp_path / 'run'}", "data.source=synthetic"]
    assert train_main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("error: override base_model=/nonexistent/clip: ") and "Hub id" in line


def test_train_with_a_bad_config_value(tmp_path, capsys):
    assert train_main(["safeclip", "lora.rank=0", f"output_dir={tmp_path / 'run'}"]) == 2
    assert _error_line(capsys) == "error: override lora.rank=0: config: lora.rank must be >= 1 (an integer), got 0"


def test_debug_shows_the_traceback(tmp_path, prompts):
    with pytest.raises(ValueError, match="neither a valid local path"):
        eval_main(["--debug", *t2i("/nonexistent/sd", prompts, tmp_path / "out"), "--no-progress"])
    with pytest.raises(ValueError, match=r"lora\.rank"):
        train_main(["--debug", "safeclip", "lora.rank=0", f"output_dir={tmp_path / 'run'}"])


def test_a_full_disk_says_so_and_a_bug_keeps_its_traceback(tmp_path):
    args = argparse.Namespace(out=tmp_path / "out", model="m")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.png"))
    assert one_line(full, args) == (
        f"error: --out {tmp_path / 'out'}: [Errno 28] No space left on device: '{tmp_path / 'out' / 'x.png'}'; "
        "free some disk space (or choose another output folder) and run the same command again"
    )
    assert one_line(RuntimeError("shape mismatch in our code"), args) is None
    assert one_line(KeyError("oops"), args) is None
