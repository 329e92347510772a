"""The gate where the pipeline computes: every argument has a role, every text-encoder call and VAE decode is
checked (whatever calls them), tokens the classifier cannot read are refused, redirect is verified per call
and safe under threads. Tiny SD pipelines; the tiny HySAC's thresholds come from its own scores (conftest)."""

import ast
import copy
import inspect
import json
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from safe_encoders import CorruptCheckpointError, UnsupportedModelError, is_safe, make_safe
from safe_encoders.hysac import HySAC, HySACBounds, SafetyGate, UnsafeContentError, add_safety_gate
from safe_encoders.hysac.gate import components
from safe_encoders.hysac.gate.roles import unknown_arguments, unknown_arguments_message
from tests.safe_encoders.hysac.gate_builders import make_gate, unet_runs
from tests.tiny_models import generate, tiny_sd_pipeline


def _rebuild(cls, pipe):
    """`cls(**pipe.components)`, keeping the components `cls` takes; progress bar off."""
    takes = inspect.signature(cls.__init__).parameters
    new = cls(**{k: v for k, v in pipe.components.items() if k in takes})
    new.set_progress_bar_config(disable=True)
    return new


def _hooks(module):
    return len(module._forward_pre_hooks) + len(module._forward_hooks)


# ------------------------------------------------------------------------------ 1. a role for every argument


def _pipeline_calls():
    """(class name, parameter names) of every class in the installed diffusers' pipelines whose `__call__` takes
    `prompt`. Read from the source: the class headers and each `def __call__(...)` header, parsed with `ast`
    (importing every pipeline takes a minute)."""
    import diffusers

    root = Path(diffusers.__file__).parent / "pipelines"
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "def __call__" not in text:
            continue
        lines, owner = text.splitlines(), None
        for i, line in enumerate(lines):
            if line.startswith("class "):
                owner = line[6:].split("(")[0].split(":")[0].strip()
            elif line.startswith("    def __call__(") and owner is not None:
                header = [line]
                while not header[-1].rstrip().endswith(":") or header[-1].lstrip().startswith("#"):
                    header.append(lines[i + len(header)])
                function = ast.parse(textwrap.dedent("\n".join(header)) + "\n    pass").body[0]
                args = function.args
                names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                if "prompt" in names:
                    found.append((owner, names))
    return found


def test_every_pipeline_of_the_installed_diffusers_is_known_or_refused_naming_the_unknown_arguments(
    classifier, prompts
):
    calls = _pipeline_calls()
    assert len(calls) > 200 and {"StableDiffusionPipelineSafe", "SemanticStableDiffusionPipeline"} <= {
        name for name, _ in calls
    }
    known = []
    for name, names in calls:
        signature = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
        unknown = unknown_arguments(signature)
        if not unknown:
            known.append(name)
            continue
        message = unknown_arguments_message(name, unknown)
        assert all(repr(n) in message for n in unknown) and "allow_unchecked=" in message
        assert unknown_arguments(signature, allowed=unknown) == []
    for name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionImg2ImgPipeline",
                 "StableDiffusionInpaintPipeline", "StableDiffusionPipelineSafe", "SemanticStableDiffusionPipeline",
                 "StableDiffusionControlNetPipeline", "StableDiffusion3Pipeline", "FluxPipeline"):  # fmt: skip
        assert name in known, name

    # the real install: a pipeline whose __call__ takes an argument with no role
    from diffusers import StableDiffusionPipeline

    class WithStyle(StableDiffusionPipeline):
        def __call__(self, prompt=None, style_vector=None, **kwargs):
            return super().__call__(prompt, **kwargs)

    pipe = WithStyle(**tiny_sd_pipeline().components)
    with pytest.raises(UnsupportedModelError, match=r"takes \['style_vector'\].*allow_unchecked=\('style_vector',\)"):
        add_safety_gate(pipe, make_gate(classifier, prompts))
    assert type(pipe) is WithStyle
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, allow_unchecked=("style_vector",)))
    generate(pipe, prompts.safe, style_vector=[1.0])
    assert handle.last_report.opt_outs == ["style_vector"]
    handle.remove()
    add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="flag"))  # not strict: installs, records
    generate(pipe, prompts.safe, style_vector=[1.0])


def test_an_unknown_keyword_through_kwargs_and_tensors_in_attention_kwargs_are_refused(classifier, prompts):
    from diffusers import StableDiffusionPipeline

    class Open(StableDiffusionPipeline):
        def __call__(self, prompt=None, **kwargs):
            kwargs.pop("secret", None)
            return super().__call__(prompt, **kwargs)

    pipe = Open(**tiny_sd_pipeline().components)
    add_safety_gate(pipe, make_gate(classifier, prompts))
    with pytest.raises(UnsafeContentError, match=r"secret was given.*no role.*allow_unchecked=\('secret',\)"):
        generate(pipe, prompts.safe, secret=1)
    generate(pipe, prompts.safe, cross_attention_kwargs={"scale": 1.0})
    with pytest.raises(UnsafeContentError, match="cross_attention_kwargs was given"):
        generate(pipe, prompts.safe, cross_attention_kwargs={"scale": torch.ones(1)})


def test_sega_editing_prompts_are_checked_at_the_call_and_at_the_encoder(classifier, prompts):
    from diffusers import SemanticStableDiffusionPipeline

    pipe = _rebuild(SemanticStableDiffusionPipeline, tiny_sd_pipeline())
    edit = dict(edit_guidance_scale=7.0, reverse_editing_direction=False, edit_warmup_steps=0)
    runs = unet_runs(pipe)
    add_safety_gate(pipe, make_gate(classifier, prompts))
    with pytest.raises(UnsafeContentError, match=r"unsafe prompt\(s\): editing_prompt \[0\]"):
        generate(pipe, prompts.safe, editing_prompt=[prompts.unsafe], **edit)
    with pytest.raises(UnsafeContentError, match="editing_prompt_embeddings was given"):
        generate(pipe, prompts.safe, editing_prompt_embeddings=torch.zeros(1, 77, 32), **edit)
    # past the call-level check (the base class's __call__): the encoder hook sees the editing prompt's tokens
    with pytest.raises(UnsafeContentError, match=r"text_encoder was about to encode unsafe text"):
        SemanticStableDiffusionPipeline.__call__(pipe, prompts.safe, editing_prompt=[prompts.unsafe],
                                                 num_inference_steps=2, height=16, width=16, **edit)  # fmt: skip
    assert runs == []
    generate(pipe, prompts.safe, editing_prompt=[prompts.safe], **edit)
    assert runs


# ------------------------------------------------------------------------------ 2. checks where the work happens


def test_class_level_calls_new_pipelines_and_from_pipe_are_checked_by_construction(classifier, prompts):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe = tiny_sd_pipeline()
    reference = generate(pipe, prompts.safe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    rebuilt = StableDiffusionPipeline(**pipe.components)
    rebuilt.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    runs = unet_runs(pipe)
    for run in (
        lambda p: StableDiffusionPipeline.__call__(pipe, p, num_inference_steps=2, height=16, width=16),
        lambda p: generate(rebuilt, p),
        lambda p: generate(img2img, p, image=image, strength=1.0),
    ):
        with pytest.raises(UnsafeContentError, match="text_encoder was about to encode unsafe text") as error:
            run(prompts.unsafe)
        assert error.value.report["text_encoder (tokens)"].action == "blocked"
    assert runs == []
    assert torch.equal(generate(rebuilt, prompts.safe), reference)  # safe prompts: untouched
    handle.remove()
    generate(rebuilt, prompts.unsafe)  # removed from the modules too
    assert _hooks(pipe.text_encoder) == 0 and _hooks(pipe.vae.decoder) == 0
    assert type(pipe.tokenizer).__call__ is type(tiny_sd_pipeline().tokenizer).__call__  # its lock is gone too


def test_the_vae_decoder_hook_applies_the_image_policy_outside_gated_calls(classifier, prompts):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_pipeline()
    reference = generate(pipe, prompts.safe)
    add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy="black",
                                     image_threshold=-1.0))  # fmt: skip
    rebuilt = StableDiffusionPipeline(**pipe.components)
    rebuilt.set_progress_bar_config(disable=True)
    assert not torch.allclose(reference, torch.zeros_like(reference))
    out = generate(rebuilt, prompts.safe)
    assert torch.equal(out, torch.zeros_like(out))  # blacked out right after the decoder


def test_an_encoder_shared_by_two_gated_pipelines_stays_gated_until_both_gates_are_removed(classifier, prompts):
    from diffusers import StableDiffusionPipeline

    first = tiny_sd_pipeline()
    second = _rebuild(StableDiffusionPipeline, first)
    assert second.text_encoder is first.text_encoder
    handles = [add_safety_gate(p, make_gate(classifier, prompts)) for p in (first, second)]
    handles[0].remove()
    with pytest.raises(UnsafeContentError, match="text_encoder was about to encode unsafe text"):
        generate(first, prompts.unsafe)  # ungated pipeline, gated encoder (the second gate's hook)
    with pytest.raises(UnsafeContentError, match=r"unsafe prompt\(s\)"):
        generate(second, prompts.unsafe)
    handles[1].remove()
    generate(first, prompts.unsafe)
    assert _hooks(first.text_encoder) == 0


def test_a_component_replaced_after_the_gate_is_added_is_hooked_too(classifier, prompts):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_pipeline()
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    pipe.text_encoder = copy.deepcopy(pipe.text_encoder)
    with pytest.raises(UnsafeContentError, match="text_encoder was about to encode unsafe text"):
        StableDiffusionPipeline.__call__(pipe, prompts.unsafe, num_inference_steps=2, height=16, width=16)
    handle.remove()
    StableDiffusionPipeline.__call__(pipe, prompts.unsafe, num_inference_steps=2, height=16, width=16)


# ------------------------------------------------------------------------------ 3. tokens the classifier cannot read


def test_textual_inversion_tokens_are_refused_naming_them(classifier, prompts):
    pipe = tiny_sd_pipeline()
    tokens = pipe.tokenizer(prompts.unsafe, add_special_tokens=False)["input_ids"]
    unsafe_word = pipe.text_encoder.get_input_embeddings().weight[tokens[-1]].detach().clone()
    pipe.load_textual_inversion({"<v1>": unsafe_word}, token="<v1>")
    prompt = prompts.unsafe.rsplit(" ", 1)[0] + " <v1>"  # "a photo of a <v1>"
    reference = generate(pipe, prompt)
    assert torch.allclose(reference, generate(pipe, prompts.unsafe), atol=1e-6)  # <v1> is the unsafe word
    handle = add_safety_gate(pipe, make_gate(classifier, prompts))
    generate(pipe, prompts.safe)
    runs = unet_runs(pipe)
    with pytest.raises(UnsafeContentError, match=r"token\(s\) \['<v1>'\].*allow_unchecked=\('unreadable_tokens',\)"):
        generate(pipe, prompt)
    assert runs == []
    handle.remove()
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, allow_unchecked=("unreadable_tokens",)))
    assert torch.equal(generate(pipe, prompt), reference)
    assert "unreadable_tokens" in handle.last_report.opt_outs
    handle.remove()
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="flag"))
    generate(pipe, prompt)
    assert handle.last_report["text_encoder (tokens)"].status == "unchecked"


# ------------------------------------------------------------------------------ 4. redirect: verified, thread-safe


def test_redirect_is_verified_at_each_call_and_refused_when_the_safe_clip_is_gone(
    classifier, prompts, trusted_safe_clip_file, monkeypatch
):
    original_state = copy.deepcopy(tiny_sd_pipeline().text_encoder.state_dict())
    full_checks = []
    check = components.is_trusted_safe_clip
    monkeypatch.setattr(components, "is_trusted_safe_clip", lambda e, h=None: full_checks.append(1) or check(e, h))

    pipe = make_safe(tiny_sd_pipeline(), trusted_safe_clip_file)  # the pipeline's own encoder does the redirection
    reference = generate(pipe, prompts.unsafe)
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    for _ in range(2):
        assert torch.equal(generate(pipe, prompts.unsafe), reference)
        assert handle.last_report.prompt_action == "redirected"
    assert full_checks == [1]  # nothing changed between the calls: the cheap check sufficed
    with torch.no_grad():
        pipe.text_encoder.load_state_dict(original_state)  # the unsafe weights, written in place
    with pytest.raises(UnsafeContentError, match="no longer holds a trusted Safe-CLIP"):
        generate(pipe, prompts.unsafe)
    assert len(full_checks) == 2
    generate(pipe, prompts.safe)  # safe prompts keep the pipeline's encoder, whatever it holds
    handle.remove()

    pipe = make_safe(tiny_sd_pipeline(), trusted_safe_clip_file)
    add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    pipe.text_encoder = tiny_sd_pipeline().text_encoder  # replaced by an encoder that is not Safe-CLIP
    with pytest.raises(UnsafeContentError, match="no longer holds a trusted Safe-CLIP"):
        generate(pipe, prompts.unsafe)

    pipe = tiny_sd_pipeline()  # a Safe-CLIP copy held by the gate
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect",
                                         redirect_checkpoint=str(trusted_safe_clip_file)))  # fmt: skip
    generate(pipe, prompts.unsafe)
    with torch.no_grad():
        handle.state["redirect"]["text_encoder"].load_state_dict(original_state)
    with pytest.raises(UnsafeContentError, match="no longer holds a trusted Safe-CLIP"):
        generate(pipe, prompts.unsafe)


def test_redirect_under_four_threads_gives_each_call_its_own_result_and_leaves_the_pipeline(
    classifier, prompts, trusted_safe_clip_file
):
    pipe = tiny_sd_pipeline()
    encoder, ungated_unsafe = pipe.text_encoder, generate(pipe, prompts.unsafe, seed=1)
    add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect",
                                redirect_checkpoint=str(trusted_safe_clip_file)))  # fmt: skip
    jobs = [(prompts.safe if i % 2 else prompts.unsafe, i % 3) for i in range(8)]
    alone = {job: generate(pipe, job[0], seed=job[1]) for job in set(jobs)}
    assert not torch.allclose(alone[(prompts.unsafe, 1)], ungated_unsafe, atol=1e-4)  # redirected
    results, errors, start = {}, [], threading.Barrier(4)

    def worker(index):
        try:
            start.wait()
            for k in range(index, len(jobs), 4):
                results[k] = generate(pipe, jobs[k][0], seed=jobs[k][1])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for k, job in enumerate(jobs):
        assert torch.equal(results[k], alone[job]), job
    assert pipe.text_encoder is encoder and not is_safe(pipe)


# ------------------------------------------------------------------------------ 5. inputs as the pipeline reads them


def test_input_images_are_read_as_diffusers_reads_them(classifier, prompts):
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    pipe = _rebuild(StableDiffusionImg2ImgPipeline, tiny_sd_pipeline())
    encoded = []
    pipe.vae.encoder.register_forward_pre_hook(lambda *_: encoded.append(1))
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), mode="RGBA")
    generate(pipe, prompts.safe, image=rgba, strength=0.5)
    assert encoded == []  # the pipeline took the RGBA image as latents
    handle = add_safety_gate(pipe, make_gate(classifier, prompts, image_policy="flag"))
    refused = {
        "as latents": rgba,
        "uint16 values": rng.integers(0, 65535, (16, 16, 3), dtype=np.uint16),
        "mode 'I;16'": Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)),
        "so the pipeline uses it as latents": torch.rand(1, 4, 16, 16),
        "outside the range": rng.random((16, 16, 3), dtype=np.float32) * 3,
    }
    for why, image in refused.items():
        with pytest.raises(UnsafeContentError, match=f"image was given, but .*{why}"):
            generate(pipe, prompts.safe, image=image, strength=0.5)
    unit = rng.random((16, 16, 3), dtype=np.float32)
    generate(pipe, prompts.safe, image=unit, strength=0.5)
    as_unit = handle.last_report["image"].verdicts.scores
    generate(pipe, prompts.safe, image=unit * 2 - 1, strength=0.5)  # diffusers reads this one as [-1, 1]
    assert torch.allclose(handle.last_report["image"].verdicts.scores, as_unit, atol=1e-5)
    generate(pipe, prompts.safe, image=Image.fromarray((unit * 255).astype(np.uint8)), strength=0.5)
    assert torch.allclose(handle.last_report["image"].verdicts.scores, as_unit, atol=1e-2)


def test_a_callback_is_checked_on_what_the_pipeline_reads_from_its_return_value(classifier, prompts):
    pipe = tiny_sd_pipeline()
    unsafe, negative = pipe.encode_prompt(prompts.unsafe, "cpu", 1, True)

    class Hiding(dict):
        def items(self):
            return [(k, v) for k, v in dict.items(self) if k != "prompt_embeds"]

        def keys(self):
            return [k for k, _ in self.items()]

    def sneaky(pipe_, step, timestep, tensors):
        return Hiding({"latents": tensors["latents"], "prompt_embeds": torch.cat([negative, unsafe])})

    add_safety_gate(pipe, make_gate(classifier, prompts))
    inputs = ["latents", "prompt_embeds"]
    with pytest.raises(UnsafeContentError, match=r"callback_on_step_end changed \['prompt_embeds'\]"):
        generate(pipe, prompts.safe, callback_on_step_end=sneaky, callback_on_step_end_tensor_inputs=inputs)


def test_a_bound_of_the_wrong_type_in_hysac_config_is_refused(tmp_path):
    from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac

    model = tiny_hysac(bounds=HySACBounds(stats={"S": {"up_95": 0.5}, "V": {"up_95": 0.7}}))
    folder = model.save_pretrained(tmp_path / "hysac")
    HySAC.from_pretrained(folder)
    config_path = Path(folder) / "hysac_config.json"
    config = json.loads(config_path.read_text())
    config["bounds"]["S"]["up_95"] = "0.5"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match=r"S\.up_95 \('0\.5', str\) must be numbers"):
        HySAC.from_pretrained(folder)


# ------------------------------------------------------------------------------ 6. SLD's unsafe_images


def test_sld_unsafe_images_are_scored_and_treated(classifier, prompts):
    from tests.safe_encoders.hysac.test_gate import _tiny_safety_checker

    pipe = tiny_sd_pipeline(sld=True)
    checker, processor = _tiny_safety_checker()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0)  # diffusers' checker flags every image
    pipe.safety_checker, pipe.feature_extractor = checker, processor

    def run():
        return pipe(prompts.safe, num_inference_steps=2, generator=torch.Generator().manual_seed(0), height=16,
                    width=16, output_type="np")  # fmt: skip

    ungated = run()
    assert ungated.unsafe_images is not None and np.abs(ungated.unsafe_images[0]).max() > 0
    handle = add_safety_gate(pipe, SafetyGate(classifier=classifier, prompt_policy="off", image_policy="black",
                                              image_threshold=-1.0))  # fmt: skip
    out = run()
    assert np.abs(out.unsafe_images).max() == 0
    assert handle.last_report["output.unsafe_images"].action == "blacked out"


def test_redirect_refuses_a_hook_added_between_calls_and_an_untrusted_safe_clip(
    classifier, prompts, safe_clip_file, trusted_safe_clip_file
):
    pipe = make_safe(tiny_sd_pipeline(), trusted_safe_clip_file)
    add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    generate(pipe, prompts.unsafe)  # verified in full once; the gate's own hooks do not count as tampering
    assert is_safe(pipe, verify=True)
    hook = pipe.text_encoder.register_forward_hook(lambda module, args, output: None)  # changes nothing, still refused
    assert not is_safe(pipe, verify=True)
    with pytest.raises(UnsafeContentError, match="forward hook"):
        generate(pipe, prompts.unsafe)
    hook.remove()
    generate(pipe, prompts.unsafe)


def test_redirect_names_the_fix_for_a_safe_clip_nobody_trusted(classifier, prompts, safe_clip_file):
    pipe = make_safe(tiny_sd_pipeline(), safe_clip_file)  # a local file: trusted only when the user says so
    add_safety_gate(pipe, make_gate(classifier, prompts, prompt_policy="redirect"))
    with pytest.raises(UnsafeContentError, match=r"trust_checkpoint\(path\)"):
        generate(pipe, prompts.unsafe)
