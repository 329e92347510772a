"""make_safe on the original `llava` package's real classes (`llava-torch` 1.2.2.post1): `LlavaLlamaForCausalLM`
with its own `CLIPVisionTower`, tiny, built and run as the package builds and runs them (original_llava.py)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from safe_encoders import (
    ArchitectureMismatchError,
    UnsupportedModelError,
    export_encoder,
    is_safe,
    load_vision_encoder,
    make_safe,
    swap_report,
    trust_checkpoint,
)
from tests.safe_encoders.llava.original_llava import (
    greedy,
    image,
    logits,
    prompt_and_pixels,
    tiny_original_llava,
    write_tower_folder,
)
from tests.tiny_models import tiny_vision_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
README = Path(__file__).resolve().parents[3] / "README.md"
TOWER = "model.model.vision_tower.vision_tower"  # llava's CLIPVisionTower wrapper, then the CLIPVisionModel


@pytest.fixture(scope="module")
def tower_folder(tmp_path_factory):
    return write_tower_folder(tmp_path_factory.mktemp("tower") / "clip-vision", seed=0)


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    """The "Safe-CLIP" tower: same architecture as the model's, other weights."""
    from transformers import CLIPVisionModel

    torch.manual_seed(7)
    return export_encoder(CLIPVisionModel(tiny_vision_config()), tmp_path_factory.mktemp("safe") / "v.safetensors")


def reference_features(safe_file, pixels, select_layer, select_feature):
    """What llava's tower must compute once swapped: a standalone CLIPVisionModel of the safe file, at the
    tower's select_layer, with its select_feature (CLS dropped for "patch")."""
    reference = load_vision_encoder(safe_file, with_projection=False).eval()
    with torch.no_grad():
        hidden = reference(pixels, output_hidden_states=True).hidden_states[select_layer]
    return hidden[:, 1:] if select_feature == "patch" else hidden


def rest_of(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".vision_tower." not in k}


@pytest.mark.parametrize(("select_layer", "select_feature"), [(-2, "patch"), (-1, "cls_patch"), (1, "patch")])
def test_the_tower_llava_runs_computes_the_safe_checkpoint(tower_folder, safe_file, select_layer, select_feature):
    model = tiny_original_llava(tower_folder, select_layer=select_layer, select_feature=select_feature)
    inputs = prompt_and_pixels(model, [image(0), image(1)])
    pixels = inputs["images"]
    before, rest = model.encode_images(pixels), rest_of(model)
    assert make_safe(model, safe_file) is model
    assert is_safe(model) and list(swap_report(model)) == [TOWER]
    expected = reference_features(safe_file, pixels, select_layer, select_feature)
    with torch.no_grad():
        torch.testing.assert_close(model.get_vision_tower()(pixels), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.encode_images(pixels), model.get_model().mm_projector(expected))
    assert not torch.allclose(model.encode_images(pixels), before)
    assert all(torch.equal(v, rest[k]) for k, v in rest_of(model).items())  # language model, projector untouched
    assert model.config.mm_vision_select_layer == select_layer and model.config.mm_vision_tower == str(tower_folder)


@pytest.mark.parametrize(
    ("language", "label"), [("mistral", TOWER), ("mpt", "model.transformer.vision_tower.vision_tower")]
)
def test_llavas_mistral_and_mpt_models(tower_folder, safe_file, language, label):
    model = tiny_original_llava(tower_folder, language=language)
    pixels = prompt_and_pixels(model, [image(0)])["images"]
    make_safe(model, safe_file)
    assert is_safe(model) and list(swap_report(model)) == [label]
    expected = reference_features(safe_file, pixels, -2, "patch")
    with torch.no_grad():
        torch.testing.assert_close(model.get_vision_tower()(pixels), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.encode_images(pixels), model.get_model().mm_projector(expected))


@pytest.mark.parametrize("variant", ["1.5", "1.6"])
def test_answers_change_with_another_tower_and_not_with_its_own(tmp_path, tower_folder, safe_file, variant):
    model = tiny_original_llava(tower_folder, variant=variant)
    inputs = prompt_and_pixels(model, [image(0, size=(40, 70))])
    if variant == "1.6":
        assert inputs["images"].ndim == 5  # any-resolution: one image, several tiles
    reference, answer = logits(model, inputs), greedy(model, inputs)
    own = export_encoder(model.get_vision_tower().vision_tower, tmp_path / "own.safetensors")
    make_safe(model, own)
    assert torch.equal(logits(model, inputs), reference) and torch.equal(greedy(model, inputs), answer)
    make_safe(model, safe_file)
    assert not torch.allclose(logits(model, inputs), reference)


def test_verify_checks_the_tower_against_the_trust_store(tower_folder, safe_file):
    model = tiny_original_llava(tower_folder)
    assert not is_safe(model)
    make_safe(model, safe_file)
    assert is_safe(model) and not is_safe(model, verify=True)  # a local file is trusted only when the user says so
    trust_checkpoint(safe_file)
    assert is_safe(model, verify=True)
    model.get_vision_tower().load_model()  # llava's builder calls it when not is_loaded: a no-op now
    assert is_safe(model, verify=True)
    with torch.no_grad():
        model.get_vision_tower().vision_tower.post_layernorm.weight.add_(1.0)  # tampered after the swap
    assert not is_safe(model, verify=True)


def test_the_wrapper_alone_is_made_safe(tower_folder, safe_file):
    tower = tiny_original_llava(tower_folder).get_vision_tower()
    assert make_safe(tower, safe_file) is tower
    assert list(swap_report(tower)) == ["model.vision_tower"]


def test_a_tower_not_loaded_yet_is_refused_and_says_how_to_load_it(tower_folder, safe_file):
    model = tiny_original_llava(tower_folder, load=False)  # as from_pretrained leaves it: delay_load
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=r"CLIPVisionTower holds no CLIPVisionModel yet.*delay_load.*"
                       r"model.get_vision_tower\(\).load_model\(\)"):  # fmt: skip
        make_safe(model, safe_file)
    assert not is_safe(model) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.get_vision_tower().load_model()
    make_safe(model, safe_file)
    assert is_safe(model)


@pytest.mark.parametrize("what", ["image size", "width"])
def test_a_checkpoint_of_another_architecture_is_refused_and_nothing_changes(tmp_path, tower_folder, what):
    from transformers import CLIPVisionModel

    config = tiny_vision_config(image_size=40) if what == "image size" else tiny_vision_config(hidden=48)
    other = export_encoder(CLIPVisionModel(config), tmp_path / "other.safetensors")
    model = tiny_original_llava(tower_folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = r"image_size 40 != 30" if what == "image size" else r"vision 48w x 2L.*vision 32w x 2L"
    with pytest.raises(ArchitectureMismatchError, match=expected):
        make_safe(model, other)
    assert not is_safe(model) and swap_report(model) == {TOWER: None}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_siglip_tower_is_unsupported_with_the_reason(tower_folder):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = tiny_original_llava(tower_folder)
    model.get_vision_tower().vision_tower = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=30, patch_size=10)
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"SiglipVisionModel \(model_type siglip_vision_model\) is not a "
                       r"CLIP vision tower.*SigLIP-based and other LLaVA variants are unsupported"):  # fmt: skip
        make_safe(model)


@pytest.mark.parametrize("how", ["tower loaded in fp16", "torch_dtype"])
def test_an_fp16_tower_runs_the_safe_weights_and_the_rest_keeps_its_dtype(tower_folder, safe_file, how):
    model = tiny_original_llava(tower_folder)
    if how == "torch_dtype":
        make_safe(model, safe_file, torch_dtype="float16")
    else:
        model.get_model().vision_tower.to(dtype=torch.float16)  # as llava's builder loads it on a GPU
        make_safe(model, safe_file)
    tower = model.get_vision_tower()
    assert tower.dtype == torch.float16 and {p.dtype for p in model.lm_head.parameters()} == {torch.float32}
    pixels = prompt_and_pixels(model, [image(0)])["images"]
    reference = load_vision_encoder(safe_file, torch_dtype=torch.float16, with_projection=False).eval()
    with torch.no_grad():
        expected = reference(pixels.half(), output_hidden_states=True).hidden_states[-2][:, 1:].float()
        torch.testing.assert_close(tower(pixels), expected, rtol=0, atol=0)  # llava casts back to the images' dtype


def readme_block(after: str) -> str:
    """The README's first python block after the line starting with `after`."""
    text = README.read_text(encoding="utf-8")
    rest = text[text.index(after) :]
    return rest.split("```python\n", 1)[1].split("```", 1)[0]


def test_save_pretrained_does_not_keep_the_swap_but_the_readmes_safe_tower_folder_does(
    tmp_path, monkeypatch, tower_folder, safe_file
):
    """llava reloads its tower from `mm_vision_tower`, not from the saved model: the swap is not claimed after a
    reload. The README's way (the swapped tower saved as a folder, `mm_vision_tower` pointing at it) keeps it."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from safe_encoders.trust.folder import verify_folder

    trust_checkpoint(safe_file)
    model = make_safe(tiny_original_llava(tower_folder), safe_file)
    model.save_pretrained(tmp_path / "saved")
    reloaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "saved")
    reloaded.get_vision_tower().load_model()
    assert not is_safe(reloaded) and not is_safe(reloaded, verify=True)
    [(label, verdict)] = verify_folder(str(tmp_path / "saved"))  # what `safe-encoders verify` says of the folder
    assert label == "model.vision_tower" and not verdict.verified
    assert f"loads its vision tower from mm_vision_tower ({tower_folder})" in verdict.reason

    monkeypatch.chdir(tmp_path)  # the README's relative paths
    exec(
        compile(readme_block("- `model.save_pretrained` does not keep the swap"), str(README), "exec"), {"model": model}
    )
    reloaded = LlavaLlamaForCausalLM.from_pretrained("llava-v1.5-7b-safe")
    reloaded.get_vision_tower().load_model()
    assert is_safe(reloaded, verify=True)
    assert [v.verified for _, v in verify_folder("safe-tower")] == [True]
    inputs = prompt_and_pixels(model, [image(2)])
    assert torch.equal(logits(reloaded.eval(), inputs), logits(model, inputs))


def test_a_module_that_only_looks_like_a_tower_is_not_a_slot():
    class Wrapper(nn.Module):  # has a CLIP config but no CLIP model: nothing it holds could be swapped
        config = tiny_vision_config()

    class LlavaThing(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = Wrapper()

    with pytest.raises(UnsupportedModelError, match=r"model.tower: Wrapper holds no CLIPVisionModel yet"):
        make_safe(LlavaThing())


def test_a_model_loaded_by_llavas_own_builder(tmp_path, tower_folder, safe_file):
    """`llava.model.builder.load_pretrained_model` (on CPU: an fp16 language model, the tower loaded after it)."""
    from llava.model.builder import load_pretrained_model

    from tests.safe_encoders.llava.original_llava import tokenizer

    saved = tmp_path / "llava-v1.5-tiny"  # the builder picks llava's classes by "llava" in the model name
    tiny_original_llava(tower_folder, load=False).save_pretrained(saved)
    tokenizer().save_pretrained(saved)
    _, model, image_processor, _ = load_pretrained_model(str(saved), None, saved.name, device="cpu")
    assert model.get_vision_tower().is_loaded and model.dtype == torch.float16
    make_safe(model, safe_file)
    assert is_safe(model) and list(swap_report(model)) == [TOWER]
    pixels = image_processor(image(0), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        got = model.get_vision_tower()(pixels)
        assert model.encode_images(pixels.half()).dtype == torch.float16  # llava passes fp16 images to an fp16 model
    torch.testing.assert_close(got, reference_features(safe_file, pixels, -2, "patch"), rtol=0, atol=0)


def test_safe_encoders_never_imports_llava():
    """Importing llava registers its configs with transformers' Auto classes: safe-encoders leaves that to the user."""
    import subprocess
    import sys

    code = "import sys, safe_encoders, safe_encoders.hysac.gate; print('llava' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=README.parent)
    assert out.stdout.strip() == "False"
