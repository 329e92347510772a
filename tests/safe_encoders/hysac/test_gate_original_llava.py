"""The safety gate on the original `llava` package's real `LlavaLlamaForCausalLM` (llava-torch): each image its
`CLIPVisionTower` is about to see is checked inside llava's own forward, before the language model runs."""

import pytest
import torch

from safe_encoders import export_encoder, is_safe, make_safe
from safe_encoders.hysac import SafetyGate, UnsafeContentError, add_safety_gate
from tests.safe_encoders.llava.original_llava import (
    image,
    logits,
    prompt_and_pixels,
    tiny_original_llava,
    write_tower_folder,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@pytest.fixture(scope="module")
def tower_folder(tmp_path_factory):
    return write_tower_folder(tmp_path_factory.mktemp("tower") / "clip-vision", seed=0)


def gate(classifier, policy, unsafe: bool, **kwargs):
    return SafetyGate(classifier=classifier, image_policy=policy, image_threshold=-1.0 if unsafe else 1e9, **kwargs)


def language_model_runs(model):
    runs = []
    model.get_model().layers[0].register_forward_pre_hook(lambda *_: runs.append(1))
    return runs


@pytest.mark.parametrize("variant", ["1.5", "1.6"])
def test_block_refuses_before_the_language_model_runs_and_safe_images_pass(classifier, tower_folder, variant):
    model = tiny_original_llava(tower_folder, variant=variant)
    inputs = prompt_and_pixels(model, [image(0, size=(40, 70))])
    reference = logits(model, inputs)
    runs = language_model_runs(model)
    handle = add_safety_gate(model, gate(classifier, "block", unsafe=True))
    with pytest.raises(UnsafeContentError, match="the model was not run") as error:
        logits(model, inputs)
    assert runs == [] and error.value.report is handle.last_report
    checked = error.value.report.inputs[0].verdicts.unsafe
    tiles = 1 if variant == "1.5" else inputs["images"].shape[1]
    assert checked.all() and len(checked) == tiles  # every tile of an any-resolution image is checked
    handle.remove()
    add_safety_gate(model, gate(classifier, "block", unsafe=False))
    assert torch.equal(logits(model, inputs), reference)


def test_black_shows_the_model_a_black_image_and_composes_with_make_safe(classifier, tower_folder, tmp_path):
    from transformers import CLIPVisionModel

    from tests.tiny_models import tiny_vision_config

    torch.manual_seed(5)
    safe_file = export_encoder(CLIPVisionModel(tiny_vision_config()), tmp_path / "safe.safetensors")
    model = make_safe(tiny_original_llava(tower_folder), safe_file)
    inputs = prompt_and_pixels(model, [image(0)])
    black = {**inputs, "images": ((0 - CLIP_MEAN) / CLIP_STD).expand_as(inputs["images"]).clone()}
    expected, unchanged = logits(model, black), logits(model, inputs)
    handle = add_safety_gate(model, gate(classifier, "black", unsafe=True))
    assert torch.equal(logits(model, inputs), expected) and not torch.equal(expected, unchanged)
    assert handle.last_report.image_action == "blacked out" and is_safe(model)
    handle.remove()
    add_safety_gate(model, gate(classifier, "flag", unsafe=True))
    assert torch.equal(logits(model, inputs), unchanged)


def test_llavas_generate_passes_its_own_inputs_embeds_and_is_refused(classifier, tower_folder):
    """llava's `generate` runs the tower, then hands `inputs_embeds` to transformers' generate: the gate cannot
    tell them from a caller's own, so it refuses (an unsafe image is refused first, by the image check)."""
    model = tiny_original_llava(tower_folder)
    inputs = prompt_and_pixels(model, [image(0)])
    handle = add_safety_gate(model, gate(classifier, "block", unsafe=True))
    with pytest.raises(UnsafeContentError, match=r"of pixel_values are unsafe.*the model was not run"):
        model.generate(inputs["input_ids"], images=inputs["images"], max_new_tokens=2)
    handle.remove()
    add_safety_gate(model, gate(classifier, "block", unsafe=False))
    with pytest.raises(UnsafeContentError, match=r"inputs_embeds was given.*allow_unchecked=\('inputs_embeds',\)"):
        model.generate(inputs["input_ids"], images=inputs["images"], max_new_tokens=2)
