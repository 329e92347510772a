"""The safety gate end to end on a tiny SD pipeline and a tiny LLaVA, with a tiny random HySAC whose
thresholds are set from its own scores so that the outcome is controlled."""

import copy
import inspect

import numpy as np
import pytest
import torch

from safe_encoders import is_safe, make_safe
from safe_encoders.hysac import SafetyGate, UnsafeContentError, add_safety_gate, remove_safety_gate
from tests.safe_encoders.hysac.gate_builders import make_gate
from tests.tiny_models import generate, tiny_sd_pipeline


def test_block_raises_before_generation_and_safe_prompts_are_untouched(classifier, prompts):
    pipe = tiny_sd_pipeline()
    reference = generate(pipe, prompts.safe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    assert torch.equal(generate(pipe, prompts.safe), reference)
    assert handle.last_report.prompt_action == "passed" and handle.last_report.image_action == "passed"
    with pytest.raises(UnsafeContentError, match=r"unsafe prompt\(s\): prompt \[0\]") as error:
        generate(pipe, prompts.unsafe)
    assert error.value.report.prompts.unsafe.tolist() == [True]
    assert handle.calls == 2


def test_block_blank_returns_black_images_for_the_unsafe_prompts_only(classifier, prompts):
    pipe = tiny_sd_pipeline()
    out_ref = pipe([prompts.safe, prompts.unsafe], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   height=16, width=16, output_type="pt", num_images_per_prompt=2)  # fmt: skip
    add_safety_gate(pipe, make_gate(classifier, prompts, on_block="blank"))
    out = pipe([prompts.safe, prompts.unsafe], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               height=16, width=16, output_type="pt", num_images_per_prompt=2)  # fmt: skip
    assert torch.allclose(out.images[:2], out_ref.images[:2], atol=1e-5)
    assert torch.equal(out.images[2:], torch.zeros_like(out.images[2:]))
    assert out.nsfw_content_detected == [False, False, True, True]


def test_redirect_through_a_safe_clip_copy_for_unsafe_prompts_only(classifier, prompts, trusted_safe_clip_file):
    pipe = tiny_sd_pipeline()
    original_encoder = pipe.text_encoder
    reference = {p: generate(pipe, p) for p in (prompts.safe, prompts.unsafe)}
    safe_pipe = make_safe(copy.deepcopy(pipe), trusted_safe_clip_file)
    redirected_reference = generate(safe_pipe, prompts.unsafe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect",
                                         redirect_checkpoint=str(trusted_safe_clip_file)))  # fmt: skip
    assert torch.equal(generate(pipe, prompts.safe), reference[prompts.safe])
    unsafe_out = generate(pipe, prompts.unsafe)
    assert handle.last_report.prompt_action == "redirected"
    assert torch.allclose(unsafe_out, redirected_reference, atol=1e-6)
    assert not torch.allclose(unsafe_out, reference[prompts.unsafe], atol=1e-3)
    assert pipe.text_encoder is original_encoder and not is_safe(pipe)  # swapped for the call only


def test_redirect_needs_a_safe_encoder_and_checks_before_touching_the_pipe(classifier, prompts, trusted_safe_clip_file):
    pipe = tiny_sd_pipeline()
    cls = type(pipe)
    with pytest.raises(ValueError, match=r"is_safe\(pipe\) is False"):
        add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    assert type(pipe) is cls and not hasattr(pipe, "_safe_encoders_gate")
    # with make_safe first, the pipeline's own (safe) encoder does the redirection
    make_safe(pipe, trusted_safe_clip_file)
    reference = generate(pipe, prompts.unsafe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    assert torch.equal(generate(pipe, prompts.unsafe), reference)
    assert handle.last_report.prompt_action == "redirected" and is_safe(pipe)


def test_flag_only_reports(classifier, prompts):
    pipe = tiny_sd_pipeline()
    reference = generate(pipe, prompts.unsafe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="flag"))
    assert torch.equal(generate(pipe, prompts.unsafe), reference)
    assert handle.last_report.prompt_action == "flagged"


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_image_policies_on_generated_images(classifier, prompts, output_type):
    pipe = tiny_sd_pipeline()

    def run(**kwargs):
        generator = torch.Generator().manual_seed(0)
        out = pipe([prompts.safe, prompts.safe], num_inference_steps=2, generator=generator, height=16, width=16,
                   output_type=output_type, **kwargs)  # fmt: skip
        return out, _as_array(out[0] if isinstance(out, tuple) else out.images)

    _, reference = run()
    for policy, check in (
        ("black", lambda a: np.allclose(a, 0)),
        ("flag", lambda a: np.array_equal(a, reference)),
        ("blur", lambda a: not np.allclose(a, reference, atol=1e-3) and _roughness(a) < _roughness(reference)),
    ):
        handle = add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy=policy,
                                                  image_threshold=-1.0))  # fmt: skip
        out, images = run()
        assert check(images), policy
        assert out.nsfw_content_detected == [True, True]
        assert handle.last_report.image_action == {"black": "blacked out", "flag": "flagged", "blur": "blurred"}[policy]
        tuple_out, tuple_images = run(return_dict=False)
        assert check(tuple_images) and tuple_out[1] == [True, True]
        handle.remove()
    handle = add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy="block",
                                              image_threshold=-1.0))  # fmt: skip
    with pytest.raises(UnsafeContentError, match="generated image"):
        run()
    handle.remove()
    _, after = run()
    assert np.array_equal(after, reference)


def test_remove_restores_the_pipeline_and_keeps_the_call_signature(classifier, prompts):
    pipe = tiny_sd_pipeline()
    cls, signature = type(pipe), inspect.signature(pipe.__call__)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    assert type(pipe).__name__ == cls.__name__ and isinstance(pipe, cls)
    assert inspect.signature(pipe.__call__) == signature
    with pytest.raises(ValueError, match="already has a safety gate"):
        add_safety_gate(pipe, make_gate(classifier, prompts))
    assert remove_safety_gate(pipe) is True
    assert type(pipe) is cls and not handle.active
    assert remove_safety_gate(pipe) is False
    generate(pipe, prompts.unsafe)  # no gate any more


def test_gate_composes_with_make_safe_afterwards(classifier, prompts, safe_clip_file):
    pipe = tiny_sd_pipeline()
    add_safety_gate(pipe, make_gate(classifier, prompts))
    make_safe(pipe, safe_clip_file)
    assert is_safe(pipe)
    with pytest.raises(UnsafeContentError):
        generate(pipe, prompts.unsafe)


def test_gate_rejects_bad_configs_and_targets(classifier):
    with pytest.raises(ValueError, match="image_policy must be one of"):
        SafetyGate(classifier=classifier, image_policy="pixelate")
    with pytest.raises(ValueError, match="no text_threshold given"):
        add_safety_gate(tiny_sd_pipeline(), SafetyGate(classifier=classifier, image_threshold=1.0))
    from safe_encoders import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="does not know how to gate"):
        add_safety_gate(torch.nn.Linear(2, 2), SafetyGate(classifier=classifier, image_threshold=1.0))


# ------------------------------------------------------------------------------- LLaVA


@pytest.mark.parametrize("next_", [False, True], ids=["llava-1.5", "llava-1.6"])
def test_llava_gate_checks_the_image_before_the_model_answers(classifier, next_):
    from tests.safe_encoders.llava.test_models import _generate, _inputs, tiny_llava

    model, processor = tiny_llava(next_)
    inputs = _inputs(processor)
    reference = _generate(model, inputs)

    handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy="block", image_threshold=-1.0))
    with pytest.raises(UnsafeContentError, match="the model was not run"):
        _generate(model, inputs)
    handle.remove()

    handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy="black", image_threshold=-1.0))
    black = dict(inputs)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    black["pixel_values"] = ((0 - mean) / std).expand_as(inputs["pixel_values"]).clone()
    gated = _generate(model, inputs)
    assert handle.last_report.image_action == "blacked out"
    handle.remove()
    assert torch.equal(gated, _generate(model, black))

    for policy in ("flag", "blur"):
        handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy=policy, image_threshold=1e9))
        assert torch.equal(_generate(model, inputs), reference)  # nothing unsafe: untouched
        assert handle.last_report.image_action == "passed"
        handle.remove()
    handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy="flag", image_threshold=-1.0))
    assert torch.equal(_generate(model, inputs), reference)
    assert handle.last_report.image_action == "flagged" and handle.last_report.images.unsafe.all()
    handle.remove()
    assert torch.equal(_generate(model, inputs), reference)
    assert not model.model.vision_tower._forward_pre_hooks


def _as_array(images):
    if isinstance(images, torch.Tensor):
        return images.permute(0, 2, 3, 1).numpy()
    if isinstance(images, list):
        return np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])
    return images


def _roughness(images):
    return np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()


def _tiny_safety_checker():
    """diffusers' real StableDiffusionSafetyChecker on a tiny random CLIP, with its image processor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from tests.tiny_models import tiny_text_config, tiny_vision_config

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=tiny_text_config().to_dict(), vision_config=tiny_vision_config().to_dict(), projection_dim=16
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return StableDiffusionSafetyChecker(config).eval(), processor


@pytest.mark.parametrize("replace", [False, True])
def test_replace_safety_checker_decides_whether_diffusers_checker_runs(classifier, prompts, replace):
    pipe = tiny_sd_pipeline()
    checker, processor = _tiny_safety_checker()
    pipe.safety_checker, pipe.feature_extractor = checker, processor
    calls = []
    checker.register_forward_hook(lambda *_: calls.append(1))
    generate(pipe, prompts.safe)
    assert calls == [1]  # the pipeline runs its checker

    add_safety_gate(pipe, make_gate(classifier, prompts, replace_safety_checker=replace))
    assert (pipe.safety_checker is None) is replace
    generate(pipe, prompts.safe)
    assert len(calls) == (1 if replace else 2)
    remove_safety_gate(pipe)
    assert pipe.safety_checker is checker  # restored on removal
