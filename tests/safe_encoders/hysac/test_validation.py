"""NaN and nonsense are refused where they enter: SafetyGate(), HySAC(), bounds, hysac_config.json, the .pth."""

import json
import math

import pytest
import torch

from safe_encoders import CorruptCheckpointError
from safe_encoders.hysac import HySAC, HySACBounds, SafetyGate, compute_bounds, score_embeddings
from safe_encoders.hysac.bounds import calibrate_threshold
from tests.safe_encoders.hysac.tiny_hysac import peft_towers, release_state, tiny_base_folder, tiny_hysac

NAN, INF = float("nan"), float("inf")
BOUNDS = {"S": {"up_95": 0.5}, "V": {"up_95": 0.7}}


@pytest.fixture(scope="module")
def model():
    return tiny_hysac(seed=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"text_threshold": NAN}, ValueError, r"text_threshold must be a finite number; got nan"),
        ({"image_threshold": INF}, ValueError, r"image_threshold must be a finite number; got inf"),
        ({"text_threshold": "abc"}, TypeError, r"text_threshold must be a finite number; got 'abc' \(str\)"),
        ({"image_threshold": True}, TypeError, r"image_threshold must be a finite number; got True"),
        ({"blur_sigma": NAN}, ValueError, r"blur_sigma must be a finite number; got nan"),
        ({"blur_sigma": 0.0}, ValueError, r"blur_sigma is a fraction of the shorter side, in \(0, 1\]; got 0.0"),
        ({"blur_sigma": 3.0}, ValueError, r"blur_sigma is a fraction .* got 3.0"),
        ({"input_std": (0, 0, 0)}, ValueError, r"input_std\[0\] must be > 0"),
        ({"input_std": (0.2, 0.2, -0.1)}, ValueError, r"input_std\[2\] must be > 0"),
        ({"input_mean": (0.5, NAN, 0.5)}, ValueError, r"input_mean\[1\] must be a finite number; got nan"),
        ({"input_mean": (0.5, 0.5)}, ValueError, r"input_mean must be three numbers"),
        ({"prompt_policy": None}, ValueError, r"prompt_policy must be one of"),
        ({"allow_unchecked": ("prompt",)}, ValueError, r"'prompt' is always checked"),
        ({"allow_unchecked": ("prompt embeds",)}, ValueError, r"allow_unchecked holds input names"),
        ({"replace_safety_checker": "yes"}, TypeError, r"replace_safety_checker must be True or False"),
    ],
)
def test_safety_gate_refuses_nan_and_nonsense_naming_the_field(model, kwargs, error, message):
    with pytest.raises(error, match=r"SafetyGate: " + message):
        SafetyGate(classifier=model, **kwargs)


def test_safety_gate_keeps_good_values_and_takes_one_opt_out_as_a_string(model):
    gate = SafetyGate(classifier=model, text_threshold=1, blur_sigma=1.0, allow_unchecked="prompt_embeds")
    assert gate.allow_unchecked == ("prompt_embeds",) and gate.strict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"curvature": NAN}, "curvature must be a finite number > 0; got nan"),
        ({"curvature_range": (0.1, INF)}, "curvature_range must be a finite number > 0; got inf"),
        ({"curvature_range": (NAN, 10.0)}, "curvature_range must be a finite number > 0; got nan"),
        ({"alpha_init": NAN}, "alpha_init must be a finite number > 0; got nan"),
        ({"logit_scale_init": -1.0}, "logit_scale_init must be a finite number > 0; got -1.0"),
    ],
)
def test_hysac_refuses_non_finite_construction_arguments(kwargs, message):
    with pytest.raises(ValueError, match=r"HySAC: " + message):
        tiny_hysac(**kwargs)


def test_bounds_scores_and_thresholds_refuse_non_finite_numbers():
    with pytest.raises(ValueError, match=r"S.up_95 \(nan\) is not finite"):
        HySACBounds(stats={"S": {"up_95": NAN}, "V": {"up_95": 0.7}})
    with pytest.raises(CorruptCheckpointError, match=r"bounds.json: V.up_95 \(inf\) is not finite"):
        HySACBounds.from_dict({"S": {"up_95": 0.5}, "V": {"up_95": INF}}, label="bounds.json")
    with pytest.raises(ValueError, match=r"group 'S' has 1 non-finite distance"):
        compute_bounds({"S": torch.tensor([0.1, NAN, 0.3])})
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibrate_threshold(torch.tensor([0.1, NAN]), torch.tensor([False, True]))
    points = torch.randn(3, 4)
    with pytest.raises(ValueError, match="threshold must be a finite number; got nan"):
        score_embeddings(points, torch.tensor(1.0), NAN)


def test_a_non_finite_score_counts_as_unsafe():
    points = torch.tensor([[0.1, 0.0], [NAN, 0.0], [INF, 0.0], [0.2, 0.1]])
    verdicts = score_embeddings(points, torch.tensor(1.0), 5.0)
    assert verdicts.unsafe.tolist() == [False, True, True, False]
    assert math.isnan(verdicts.scores[1].item())


# ------------------------------------------------------------------------ hysac_config.json


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    model = tiny_hysac(bounds=HySACBounds.from_dict(BOUNDS))
    return model.save_pretrained(tmp_path_factory.mktemp("hysac") / "export")


def _edited(export, tmp_path, edit):
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(export, folder)
    config = json.loads((folder / "hysac_config.json").read_text())
    config = edit(config)
    (folder / "hysac_config.json").write_text(json.dumps(config))  # json writes NaN / Infinity as Python does
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: {**c, "log_curvature": NAN}, r"log_curvature must be a finite number; got nan"),
        (lambda c: {**c, "log_text_alpha": "0.1"}, r"log_text_alpha must be a finite number; got '0.1'"),
        (lambda c: {**c, "logit_scale": INF}, r"logit_scale must be a finite number; got inf"),
        (lambda c: {**c, "curvature_range": [0.1, NAN]}, r"curvature_range\[1\] must be a finite number; got nan"),
        (lambda c: {**c, "curvature_range": [0.0, 10]}, r"curvature_range\[0\] must be > 0"),
        (lambda c: {**c, "bounds": {"S": {"up_95": NAN}, "V": {"up_95": 0.7}}}, r"\(bounds\): S.up_95 \(nan\) is not"),
        (lambda c: {**c, "format_version": "abc"}, r"format_version must be a whole number >= 1; got 'abc'"),
        (lambda c: {**c, "format_version": 1.5}, r"format_version must be a whole number >= 1; got 1.5"),
        (lambda c: [c], r"expected a JSON object, got a list"),
        (lambda c: {**c, "encoders": None}, r"encoders must be an object of digests; got None"),
    ],
    ids=[
        "nan-curvature",
        "string-alpha",
        "inf-logit",
        "nan-range",
        "zero-range",
        "nan-bounds",
        "version-abc",
        "version-float",
        "list",
        "no-encoders",
    ],
)
def test_export_config_with_nan_or_nonsense_is_a_corrupt_checkpoint_naming_file_and_field(
    export, tmp_path, edit, message
):
    folder = _edited(export, tmp_path, edit)
    with pytest.raises(CorruptCheckpointError, match=r"hysac_config.json.*" + message):
        HySAC.from_pretrained(folder, load_processors=False)


def test_the_unedited_export_loads(export):
    assert HySAC.from_pretrained(export, load_processors=False).bounds.threshold("text") == 0.5


# ------------------------------------------------------------------------ the authors' .pth


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    text, vision = peft_towers()
    folder = root / "release"
    folder.mkdir()
    torch.save(release_state(text, vision), folder / "hysac_model.pth")
    return folder, str(tiny_base_folder(root / "base"))


def _copy_release(release, tmp_path, data=None, bounds=None):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "hysac_model.pth").write_bytes(data if data is not None else (release / "hysac_model.pth").read_bytes())
    if bounds is not None:
        (folder / "hysac_bounds.json").write_text(json.dumps(bounds))
    return folder


def test_a_truncated_release_is_corrupt_not_a_pickle_refusal(release, tmp_path):
    folder, base = release
    data = (folder / "hysac_model.pth").read_bytes()
    copy = _copy_release(folder, tmp_path, data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"copy/hysac_model.pth is truncated or damaged"):
        HySAC.from_pretrained(copy, base_model=base, load_processors=False)


def test_a_release_with_a_damaged_member_is_refused(release, tmp_path):
    folder, base = release
    data = bytearray((folder / "hysac_model.pth").read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # inside a tensor's bytes: torch alone reads it happily
    copy = _copy_release(folder, tmp_path, bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"hysac_model.pth is damaged: the member .* fails its checksum"):
        HySAC.from_pretrained(copy, base_model=base, load_processors=False)


def test_an_empty_release_is_refused(release, tmp_path):
    folder, base = release
    with pytest.raises(CorruptCheckpointError, match=r"hysac_model\.pth is empty"):
        HySAC.from_pretrained(_copy_release(folder, tmp_path, b""), base_model=base, load_processors=False)


def test_release_scalars_and_bounds_must_be_finite(release, tmp_path):
    folder, base = release
    text, vision = peft_towers()
    state = release_state(text, vision)
    state["curv"] = torch.tensor(NAN)
    bad = tmp_path / "nan-curv"
    bad.mkdir()
    torch.save(state, bad / "hysac_model.pth")
    with pytest.raises(CorruptCheckpointError, match=r"hysac_model.pth: curv is nan, not a finite number"):
        HySAC.from_pretrained(bad, base_model=base, load_processors=False)
    copy = _copy_release(folder, tmp_path, bounds={"S": {"up_95": NAN}, "V": {"up_95": 0.7}})
    with pytest.raises(CorruptCheckpointError, match=r"hysac_bounds.json: S.up_95 \(nan\) is not finite"):
        HySAC.from_pretrained(copy, base_model=base, load_processors=False)
    # the unedited release loads
    assert HySAC.from_pretrained(folder, base_model=base, load_processors=False).curvature.item() > 0
