"""Every known way around the gate, each closed: refused with a message naming the input and the opt-out,
or checked and handled. Tiny SD 1.x / SDXL pipelines and a tiny LLaVA; the tiny HySAC's thresholds come
from its own scores (see conftest.py), so which prompt is "unsafe" is controlled."""

import copy
import inspect

import pytest
import torch

from safe_encoders import UnsupportedModelError, make_safe
from safe_encoders.hysac import HySACBounds, SafetyGate, UnsafeContentError, add_safety_gate
from tests.safe_encoders.hysac.gate_builders import make_gate, unet_runs
from tests.tiny_models import generate, tiny_sd_pipeline


def _run(pipe, prompt, *, seed=0, **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), height=16, width=16,
                **kwargs)  # fmt: skip


# ------------------------------------------------------------------------------ embeddings


def test_prompt_embeds_are_refused_unless_opted_out_and_the_opt_out_is_recorded(classifier, prompts):
    pipe = tiny_sd_pipeline()
    embeds, _ = pipe.encode_prompt(prompts.unsafe, "cpu", 1, False)
    reference = generate(pipe, None, prompt_embeds=embeds)
    runs = unet_runs(pipe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    with pytest.raises(UnsafeContentError, match=r"prompt_embeds was given.*allow_unchecked=\('prompt_embeds',\)") as e:
        generate(pipe, None, prompt_embeds=embeds)
    assert runs == [] and e.value.report["prompt_embeds"].action == "refused"
    handle.remove()

    handle = add_safety_gate(pipe, make_gate(classifier, prompts, allow_unchecked=("prompt_embeds",)))
    assert torch.equal(generate(pipe, None, prompt_embeds=embeds), reference)
    report = handle.last_report
    assert report.opt_outs == ["prompt_embeds"] and report["prompt_embeds"].status == "allowed unchecked"
    assert report.prompt_action == "unchecked"
    handle.remove()

    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="flag"))  # not strict: recorded only
    assert torch.equal(generate(pipe, None, prompt_embeds=embeds), reference)
    assert handle.last_report["prompt_embeds"].status == "unchecked" and handle.last_report.opt_outs == []


def test_redirect_does_not_take_prompt_embeds_made_by_the_original_encoder(classifier, prompts, safe_clip_file):
    pipe = tiny_sd_pipeline()
    embeds, _ = pipe.encode_prompt(prompts.unsafe, "cpu", 1, False)  # the unsafe encoder's embedding
    make_safe(pipe, safe_clip_file)
    runs = unet_runs(pipe)
    add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    with pytest.raises(UnsafeContentError, match="prompt_embeds was given"):
        generate(pipe, None, prompt_embeds=embeds)
    assert runs == []


def test_sdxl_prompt_2_is_checked_and_each_embedding_needs_its_own_opt_out(classifier, prompts):
    pipe = tiny_sd_pipeline("xl")
    reference = _run(pipe, [prompts.safe, prompts.safe], prompt_2=[prompts.safe, prompts.safe]).images
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    with pytest.raises(UnsafeContentError, match=r"unsafe prompt\(s\): prompt_2 \[0\]") as error:
        _run(pipe, prompts.safe, prompt_2=prompts.unsafe)
    assert error.value.report["prompt"].action == "passed" and error.value.report["prompt_2"].action == "blocked"
    handle.remove()

    handle = add_safety_gate(pipe, make_gate(classifier, prompts, on_block="blank"))
    out = _run(pipe, [prompts.safe, prompts.safe], prompt_2=[prompts.safe, prompts.unsafe])
    assert torch.allclose(out.images[0], reference[0], atol=1e-5)
    assert torch.equal(out.images[1], torch.zeros_like(out.images[1]))
    assert handle.last_report["prompt_2"].action == "blanked"
    handle.remove()

    embeds, _, pooled, _ = pipe.encode_prompt(prompts.unsafe, device="cpu", do_classifier_free_guidance=False)
    add_safety_gate(pipe, make_gate(classifier, prompts, allow_unchecked=("prompt_embeds",)))
    with pytest.raises(UnsafeContentError, match=r"pooled_prompt_embeds was given.*'pooled_prompt_embeds'"):
        _run(pipe, None, prompt_embeds=embeds, pooled_prompt_embeds=pooled)


def test_ip_adapter_inputs_are_checked_or_refused(classifier, prompts):
    pipe = tiny_sd_pipeline()
    runs = unet_runs(pipe)
    image = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="block", image_threshold=-1.0))
    with pytest.raises(UnsafeContentError, match=r"input image\(s\) \[0\] of ip_adapter_image are unsafe") as error:
        _run(pipe, prompts.safe, ip_adapter_image=image)
    assert error.value.report["ip_adapter_image"].verdicts.unsafe.tolist() == [True]
    with pytest.raises(UnsafeContentError, match="ip_adapter_image_embeds was given"):
        _run(pipe, prompts.safe, ip_adapter_image_embeds=[torch.zeros(2, 1, 16)])
    assert runs == []


# ------------------------------------------------------------------------------ image inputs


def test_img2img_input_image_follows_the_image_policy(classifier, prompts):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd_pipeline().components)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.vae.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def run():
        return _run(pipe, prompts.safe, image=image, strength=1.0).images

    run()
    assert not torch.allclose(seen[-1], -torch.ones_like(seen[-1]))
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="black", image_threshold=-1.0))
    run()
    assert torch.equal(seen[-1], -torch.ones_like(seen[-1]))  # the VAE saw a black image ([-1, 1] scale)
    assert handle.last_report["image"].action == "blacked out"
    handle.remove()

    handle = add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="block", image_threshold=-1.0))
    count = len(seen)
    with pytest.raises(UnsafeContentError, match=r"input image\(s\) \[0\] of image .*generation was not run"):
        run()
    assert len(seen) == count
    handle.remove()

    handle = add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="off"))
    with pytest.raises(UnsafeContentError, match=r"image was given, but image_policy is 'off'.*\('image',\)"):
        run()
    handle.remove()
    add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="off", allow_unchecked=("image",)))
    run()
    assert torch.allclose(seen[-1], image * 2 - 1, atol=1e-6)


# ------------------------------------------------------------------------------ callbacks


def test_a_step_end_callback_may_change_the_latents_only(classifier, prompts):
    pipe = tiny_sd_pipeline()
    unsafe, negative = pipe.encode_prompt(prompts.unsafe, "cpu", 1, True)

    def swap_in_unsafe(pipe_, step, timestep, tensors):
        return {**tensors, "prompt_embeds": torch.cat([negative, unsafe])}

    def change_in_place(pipe_, step, timestep, tensors):
        tensors["prompt_embeds"][1:] = unsafe  # the pipeline's own tensor; nothing returned but the latents
        return {"latents": tensors["latents"]}

    def scale_latents(pipe_, step, timestep, tensors):
        return {"latents": tensors["latents"] * 0.9}

    inputs = ["latents", "prompt_embeds"]
    ungated = {
        f: generate(pipe, prompts.safe, callback_on_step_end=f, callback_on_step_end_tensor_inputs=inputs)
        for f in (swap_in_unsafe, scale_latents)
    }
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    for callback in (swap_in_unsafe, change_in_place):
        with pytest.raises(UnsafeContentError, match=r"callback_on_step_end changed \['prompt_embeds'\] at step 0"):
            generate(pipe, prompts.safe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs)
    out = generate(pipe, prompts.safe, callback_on_step_end=scale_latents, callback_on_step_end_tensor_inputs=inputs)
    assert torch.equal(out, ungated[scale_latents])
    assert handle.last_report["callback_on_step_end"].status == "checked"
    from diffusers.callbacks import SDCFGCutoffCallback  # diffusers' own: drops the negative prompt_embeds mid-call

    with pytest.raises(UnsafeContentError, match=r"callback_on_step_end changed \['prompt_embeds'\] at step 1"):
        cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
        generate(pipe, prompts.safe, callback_on_step_end=cutoff)
    handle.remove()

    handle = add_safety_gate(pipe, make_gate(classifier, prompts, allow_unchecked=("callback_on_step_end",)))
    out = generate(pipe, prompts.safe, callback_on_step_end=swap_in_unsafe, callback_on_step_end_tensor_inputs=inputs)
    assert torch.equal(out, ungated[swap_in_unsafe])
    assert handle.last_report.opt_outs == ["callback_on_step_end"]


def test_a_prompt_longer_than_the_classifier_reads_is_scored_to_its_end(classifier, prompts):
    limit = classifier.tokenizer.model_max_length - 2  # 75 CLIP tokens between the start and end tokens
    head = " ".join(["the"] * limit)  # one token each: the unsafe prompt starts right after what CLIP reads
    assert classifier.unsafe_score(texts=[head], text_threshold=prompts.threshold).text.unsafe.tolist() == [False]
    pipe = tiny_sd_pipeline()
    runs = unet_runs(pipe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    with pytest.raises(UnsafeContentError, match=r"unsafe prompt\(s\): prompt \[0\]"):
        generate(pipe, f"{head} {prompts.unsafe}")
    assert runs == []
    generate(pipe, f"{head} {prompts.safe}")  # as long, safe to its end
    assert handle.last_report.prompt_action == "passed"


# ------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("variant", ["v1", "xl"])
def test_latent_output_is_decoded_and_checked(classifier, prompts, variant):
    pipe = tiny_sd_pipeline(variant)
    reference = _run(pipe, prompts.safe, output_type="latent").images
    handle = add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy="flag",
                                              image_threshold=1e9))  # fmt: skip
    assert torch.equal(_run(pipe, prompts.safe, output_type="latent").images, reference)
    latent_check = handle.last_report["output.images"]
    assert latent_check.status == "checked" and latent_check.action == "passed"
    _run(pipe, prompts.safe, output_type="pt")  # the gate decodes as the pipeline does: same scores
    assert torch.allclose(latent_check.verdicts.scores, handle.last_report.images.scores, atol=1e-4)
    handle.remove()

    handle = add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy="flag",
                                              image_threshold=-1.0))  # fmt: skip
    out = _run(pipe, prompts.safe, output_type="latent")
    assert torch.equal(out.images, reference) and handle.last_report.image_action == "flagged"
    as_tuple = _run(pipe, prompts.safe, output_type="latent", return_dict=False)
    assert torch.equal(as_tuple[0], reference) and handle.last_report.image_action == "flagged"
    handle.remove()
    for policy, message in (("block", "the output was withheld"), ("blur", "cannot be blurred"),
                            ("black", "cannot be blacked out")):  # fmt: skip
        handle = add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy=policy,
                                                  image_threshold=-1.0))  # fmt: skip
        for return_dict in (True, False):
            with pytest.raises(UnsafeContentError, match=message):
                _run(pipe, prompts.safe, output_type="latent", return_dict=return_dict)
        handle.remove()


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_sdxl_tuple_outputs_are_checked(classifier, prompts, output_type):
    pipe = tiny_sd_pipeline("xl")
    add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy="block",
                                     image_threshold=-1.0))  # fmt: skip
    with pytest.raises(UnsafeContentError, match=r"generated image\(s\) \[0\] of output\[0\] are unsafe"):
        _run(pipe, prompts.safe, output_type=output_type, return_dict=False)


# ------------------------------------------------------------------------------ NaN at run time


def test_a_non_finite_score_at_run_time_counts_as_unsafe(classifier, prompts):
    pipe = tiny_sd_pipeline()
    broken = copy.deepcopy(classifier)
    handle = add_safety_gate(pipe, make_gate(broken, prompts, image_policy="black"))
    generate(pipe, prompts.safe)
    assert handle.last_report.prompt_action == "passed"
    with torch.no_grad():
        broken.text.text_projection.weight[0, 0] = float("nan")
    with pytest.raises(UnsafeContentError, match=r"prompt \[0\] \(root distance \[nan\], item\(s\) \[0\] scored"):
        generate(pipe, prompts.safe)
    assert "not finite: counted as unsafe" in handle.last_report["prompt"].note
    handle.remove()

    broken = copy.deepcopy(classifier)
    handle = add_safety_gate(pipe, SafetyGate(classifier=broken, prompt_policy="off", image_policy="black",
                                              image_threshold=1e9))  # fmt: skip
    with torch.no_grad():
        broken.vision.visual_projection.weight.fill_(float("inf"))
    out = generate(pipe, prompts.safe)
    assert torch.equal(out, torch.zeros_like(out))
    assert handle.last_report.image_action == "blacked out" and "not finite" in handle.last_report["output.images"].note


def test_a_classifier_with_nan_parameters_or_bounds_is_refused_when_the_gate_is_added(classifier, prompts):
    pipe = tiny_sd_pipeline()
    broken = copy.deepcopy(classifier)
    with torch.no_grad():
        broken.log_curvature.fill_(float("nan"))
    with pytest.raises(ValueError, match="classifier's log_curvature is nan"):
        add_safety_gate(pipe, make_gate(broken, prompts))
    broken = copy.deepcopy(classifier)
    broken.bounds = HySACBounds(stats={"S": {"up_95": 0.5}, "V": {"up_95": 0.7}})
    broken.bounds.stats["S"]["up_95"] = float("nan")  # changed after it was checked
    with pytest.raises(ValueError, match="the classifier's text bound must be a finite number; got nan"):
        add_safety_gate(pipe, SafetyGate(classifier=broken, image_threshold=1.0))
    assert not hasattr(pipe, "_safe_encoders_gate")


# ------------------------------------------------------------------------------ the report


def test_the_report_lists_every_input_of_the_call(classifier, prompts):
    pipe = tiny_sd_pipeline()
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="flag"))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    generate(pipe, prompts.safe, negative_prompt=prompts.unsafe, latents=latents)
    report = handle.last_report
    statuses = {check.name: (check.status, check.action) for check in report.inputs}
    assert statuses == {
        "prompt": ("checked", "passed"),
        "negative_prompt": ("not a target", "used"),
        "latents": ("not a target", "used"),
        "output.images": ("checked", "passed"),
    }
    assert report["prompt"].verdicts.scores.shape == (1,) and report["prompt"].verdicts.scores[0] < prompts.threshold
    assert "negative_prompt: not a target, used (a negative prompt steers" in report.summary()


# ------------------------------------------------------------------------------ dispatch


def test_a_registered_handler_with_an_install_gate_hook_gets_gating():
    from transformers import CLIPVisionModel

    from safe_encoders.dispatch import HANDLERS, TargetHandler, register_handler
    from safe_encoders.hysac.gate import install_llava_gate
    from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac
    from tests.tiny_models import tiny_vision_config

    tower = CLIPVisionModel(tiny_vision_config()).eval()
    classifier = tiny_hysac(seed=3)
    gate = SafetyGate(classifier=classifier, image_policy="block", image_threshold=-1.0, prompt_policy="off")
    with pytest.raises(UnsupportedModelError, match=r"does not know how to gate .*CLIPVisionModel. Supported: diff"):
        add_safety_gate(tower, gate)
    handler = TargetHandler(
        name="a bare CLIP vision tower, gated like a LLaVA tower",
        matches=lambda obj: isinstance(obj, CLIPVisionModel),
        slots=lambda obj: [],
        install_gate=install_llava_gate,
    )
    register_handler(handler, first=True)
    try:
        handle = add_safety_gate(tower, gate)
        assert handle.handler == handler.name
        with pytest.raises(UnsafeContentError, match="the model was not run"):
            tower(pixel_values=torch.randn(1, 3, 30, 30))
        handle.remove()
        tower(pixel_values=torch.randn(1, 3, 30, 30))
    finally:
        HANDLERS.remove(handler)


# ------------------------------------------------------------------------------ LLaVA


def test_llava_refuses_caller_inputs_embeds_and_treats_a_nan_image_score_as_unsafe(classifier):
    from tests.safe_encoders.llava.test_models import _generate, _inputs, tiny_llava

    model, processor = tiny_llava(False)
    inputs = _inputs(processor)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy="blur", image_threshold=1e9))
    _generate(model, inputs)  # generate() itself passes input_ids: not refused
    refused = r"inputs_embeds was given.*allow_unchecked=\('inputs_embeds',\)"
    with pytest.raises(UnsafeContentError, match=refused), torch.no_grad():
        model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=2)
    handle.remove()

    handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy="blur", image_threshold=1e9,
                                               allow_unchecked=("inputs_embeds",)))  # fmt: skip
    with torch.no_grad():
        model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                       pixel_values=inputs["pixel_values"], max_new_tokens=2)  # fmt: skip
    assert handle.last_report.opt_outs == ["inputs_embeds"] and handle.last_report.image_action == "passed"
    handle.remove()

    if "mm_encoder_outputs" in inspect.signature(model.forward).parameters:  # transformers 5
        features = {"image": model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)}
        handle = add_safety_gate(model, SafetyGate(classifier=classifier, image_policy="block", image_threshold=-1.0))
        with pytest.raises(UnsafeContentError, match=r"mm_encoder_outputs was given"), torch.no_grad():
            model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           mm_encoder_outputs=features, max_new_tokens=2)  # fmt: skip
        handle.remove()

    broken = copy.deepcopy(classifier)
    add_safety_gate(model, SafetyGate(classifier=broken, image_policy="block", image_threshold=1e9))
    with torch.no_grad():
        broken.vision.visual_projection.weight.fill_(float("nan"))
    with pytest.raises(UnsafeContentError, match=r"not finite: counted as unsafe.*the model was not run"):
        _generate(model, inputs)
