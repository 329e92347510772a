"""`safe-encoders verify` and `safe-encoders trust`: a saved folder is checked from its files alone (nothing is built),
against the trust store; exit 0 only when every encoder is verified and trusted, 1 when not, 2 on a usage error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from safe_encoders import export_encoder, make_safe, trust_checkpoint
from safe_encoders.cli import main
from safe_encoders.format import RECORD_KEY
from tests.tiny_models import tiny_sd_pipeline, tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, safe_file):
    """A tiny SD pipeline made safe with `safe_file`, saved in float32 and in float16."""
    root = tmp_path_factory.mktemp("saved")
    pipe = make_safe(tiny_sd_pipeline("v1"), safe_file)
    pipe.save_pretrained(root / "fp32")
    pipe.to(torch.float16).save_pretrained(root / "fp16")
    tiny_sd_pipeline("v1").save_pretrained(root / "original")
    return root


def verify(capsys, *args) -> tuple[int, str]:
    code = main(["verify", *map(str, args)])
    return code, capsys.readouterr().out


def test_a_saved_safe_pipeline_verifies_once_its_checkpoint_is_trusted(capsys, saved, safe_file):
    code, out = verify(capsys, saved / "fp32")
    assert code == 1 and "NOT verified" in out and "none is trusted" in out
    trust_checkpoint(safe_file)
    code, out = verify(capsys, saved / "fp32")
    assert code == 0, out
    assert "pipe.text_encoder" in out and "user" in out and "verified" in out


def test_a_pipeline_saved_in_float16_verifies_against_the_checkpoint_cast_the_same_way(capsys, saved, safe_file):
    trust_checkpoint(safe_file)
    code, out = verify(capsys, saved / "fp16", "--json")
    report = json.loads(out)
    assert code == 0 and report["verified"] is True
    assert report["encoders"]["pipe.text_encoder"]["trusted_by"] == "user"


def test_the_original_pipeline_with_a_forged_record_does_not_verify(capsys, tmp_path, saved, safe_file):
    import shutil

    trust_checkpoint(safe_file)
    folder = shutil.copytree(saved / "original", tmp_path / "forged")
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config[RECORD_KEY] = json.loads((saved / "fp32" / "text_encoder" / "config.json").read_text())[RECORD_KEY]
    config_path.write_text(json.dumps(config))
    code, out = verify(capsys, folder, "--json")
    report = json.loads(out)["encoders"]["pipe.text_encoder"]
    assert code == 1 and report["verified"] is False and report["trusted_by"] is None


def test_a_missing_or_changed_tensor_is_named(capsys, tmp_path, saved, safe_file):
    import shutil

    trust_checkpoint(safe_file)
    folder = shutil.copytree(saved / "fp32", tmp_path / "changed")
    weights = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("final_layer_norm.bias"))
    del tensors[key]
    save_file(tensors, weights, metadata={"format": "pt"})
    code, out = verify(capsys, folder)
    assert code == 1 and "final_layer_norm.bias (missing)" in out
    tensors[key] = torch.ones(32)
    save_file(tensors, weights, metadata={"format": "pt"})
    code, out = verify(capsys, folder)
    assert code == 1 and "final_layer_norm.bias" in out


def test_a_changed_config_value_and_remote_code_are_refused(capsys, tmp_path, saved, safe_file):
    import shutil

    trust_checkpoint(safe_file)
    folder = shutil.copytree(saved / "fp32", tmp_path / "config")
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "hidden_act": "gelu"}))
    code, out = verify(capsys, folder)
    assert code == 1 and "hidden_act" in out
    config_path.write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    code, out = verify(capsys, folder)
    assert code == 1 and "auto_map" in out


def test_a_llava_folder_is_verified_from_its_files(capsys, tmp_path):
    from transformers import CLIPVisionModel

    from tests.safe_encoders.llava.test_models import tiny_llava
    from tests.tiny_models import tiny_vision_config

    torch.manual_seed(99)
    tower = export_encoder(CLIPVisionModel(tiny_vision_config(image_size=30)), tmp_path / "vision.safetensors")
    model, _ = tiny_llava()
    make_safe(model, tower)
    model.save_pretrained(tmp_path / "llava")
    code, out = verify(capsys, tmp_path / "llava")
    assert code == 1 and "model.vision_tower" in out
    trust_checkpoint(tower)
    code, out = verify(capsys, tmp_path / "llava")
    assert code == 0, out


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert "not a saved diffusers pipeline" in capsys.readouterr().err


def test_the_trust_command_trusts_and_lists(capsys, safe_file):
    assert main(["trust", str(safe_file)]) == 0
    assert "trusted text encoder" in capsys.readouterr().out
    assert main(["trust", "--list"]) == 0
    assert str(safe_file) in capsys.readouterr().out
    assert main(["trust"]) == 2
