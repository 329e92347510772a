"""is_safe(verify=True) as an attacker meets it: a claim is checked against the trust store, never against the
model's own record, and every way the forward can be changed (weights, buffers, layers, hooks, forward) fails it."""

from __future__ import annotations

import copy

import pytest
import torch

from safe_encoders import (
    InvalidArgumentError,
    SafeEncodersError,
    export_encoder,
    is_safe,
    make_safe,
    swap_report,
    trust_checkpoint,
    verify_encoder,
)
from safe_encoders.format import RECORD_KEY, tensor_digest
from safe_encoders.swap import installed_fields
from tests.tiny_models import tiny_sd_pipeline, tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    """The stand-in Safe-CLIP: a tiny text encoder with other weights than the targets."""
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


@pytest.fixture
def trusted(safe_file):
    trust_checkpoint(safe_file)
    return safe_file


@pytest.fixture
def swapped(trusted):
    encoder = make_safe(tiny_text_encoder(seed=0), trusted)
    assert is_safe(encoder, verify=True)
    return encoder


def verdict(obj) -> dict:
    (entry,) = [value for value in swap_report(obj, verify=True).values() if value is not None]
    return entry


# ---------------------------------------------------------------------------------- trust comes from outside


def test_a_forged_record_in_a_saved_pipeline_is_reported_as_forged(tmp_path, trusted):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_pipeline("v1")
    real = make_safe(tiny_text_encoder(seed=0), trusted)  # a genuine record, to copy its hints
    original = {key: tensor_digest(value) for key, value in pipe.text_encoder.state_dict().items()
                if not key.endswith("position_ids")}  # fmt: skip
    forged = {**getattr(real.config, RECORD_KEY), **installed_fields(original)}
    setattr(pipe.text_encoder.config, RECORD_KEY, forged)
    pipe.save_pretrained(tmp_path / "forged")
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "forged")
    assert is_safe(reloaded)  # the record alone says so...
    assert not is_safe(reloaded, verify=True)  # ...the trust store does not
    report = verdict(reloaded)
    assert report["forged"] is True and report["trusted_by"] is None and report["verified"] is False
    assert "forged" in report["reason"] and report["first_difference"] is not None


def test_any_clip_exported_and_swapped_in_is_not_trusted_until_the_user_says_so(tmp_path):
    pipe = tiny_sd_pipeline("v1")
    own = export_encoder(pipe.text_encoder, tmp_path / "o.safetensors")
    make_safe(pipe, own)
    assert is_safe(pipe) and not is_safe(pipe, verify=True)
    report = verdict(pipe)
    assert report["trusted_by"] is None and "does not trust" in report["reason"]
    trust_checkpoint(own)
    assert is_safe(pipe, verify=True) and verdict(pipe)["trusted_by"] == "user"


def test_verified_needs_no_record_but_a_trusted_checkpoint(trusted):
    encoder = make_safe(tiny_text_encoder(seed=0), trusted)
    delattr(encoder.config, RECORD_KEY)
    assert verify_encoder(encoder).verified and verify_encoder(encoder).trusted_by == "user"


# ---------------------------------------------------------------------------------- the whole module


def test_a_forward_hook_fails_verification_and_removing_it_restores_it(swapped):
    handle = swapped.encoder.layers[1].register_forward_hook(lambda module, args, output: output)
    report = verdict(swapped)
    assert not report["verified"] and report["first_difference"] == "encoder.layers.1"
    assert "forward hook" in report["reason"]
    handle.remove()
    assert is_safe(swapped, verify=True)


def test_a_forward_pre_hook_fails_verification(swapped):
    swapped.embeddings.register_forward_pre_hook(lambda module, args: args)
    assert not is_safe(swapped, verify=True) and "pre-hook" in verdict(swapped)["reason"]


def test_a_global_forward_hook_fails_verification(swapped):
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda module, args, output: output)
    try:
        assert not is_safe(swapped, verify=True) and "global" in verdict(swapped)["reason"]
    finally:
        handle.remove()
    assert is_safe(swapped, verify=True)


def test_an_instance_forward_override_fails_verification(swapped):
    other = tiny_text_encoder(seed=0)
    swapped.forward = other.forward
    report = verdict(swapped)
    assert not report["verified"] and "forward is replaced" in report["reason"]


def test_an_appended_layer_fails_verification(swapped):
    swapped.encoder.layers.append(copy.deepcopy(swapped.encoder.layers[0]))
    report = verdict(swapped)
    assert not report["verified"] and report["first_difference"].startswith("encoder.layers.3")


def test_a_module_added_after_the_last_one_fails_verification(swapped):
    swapped.add_module("extra", torch.nn.Linear(32, 32))
    report = verdict(swapped)
    assert not report["verified"] and report["first_difference"] == "extra" and "added" in report["reason"]


def test_a_replaced_submodule_class_fails_verification(swapped):
    class Sneaky(torch.nn.LayerNorm):
        pass

    sneaky = Sneaky(32)
    sneaky.load_state_dict(swapped.final_layer_norm.state_dict())
    swapped.final_layer_norm = sneaky
    report = verdict(swapped)
    assert not report["verified"] and report["first_difference"] == "final_layer_norm"


def test_a_zeroed_buffer_fails_verification(swapped):
    swapped.embeddings.position_ids.zero_()
    report = verdict(swapped)
    assert not report["verified"] and report["first_difference"] == "embeddings.position_ids"


def test_a_changed_config_value_the_forward_reads_fails_verification(swapped):
    swapped.config.hidden_act = "gelu"
    swapped.encoder.layers[0].mlp.activation_fn = torch.nn.GELU()  # not a transformers class either
    assert not is_safe(swapped, verify=True)


def test_a_changed_layer_norm_eps_in_the_config_fails_verification(swapped):
    swapped.config.layer_norm_eps = 1e-3
    report = verdict(swapped)
    assert not report["verified"] and "layer_norm_eps" in report["reason"]


# ---------------------------------------------------------------------------------- dtype-aware


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_a_pipeline_cast_after_the_swap_verifies_and_a_tampered_tensor_still_fails(trusted, dtype):
    pipe = make_safe(tiny_sd_pipeline("v1"), trusted)
    pipe.to(dtype)
    assert pipe.text_encoder.dtype == dtype
    assert is_safe(pipe, verify=True)
    direct = make_safe(tiny_text_encoder(seed=0), trusted, torch_dtype=dtype)  # bit for bit what it installs
    assert all(torch.equal(a.view(torch.int16), b.view(torch.int16))
               for a, b in zip(pipe.text_encoder.parameters(), direct.parameters(), strict=True))  # fmt: skip
    with torch.no_grad():
        pipe.text_encoder.encoder.layers[2].mlp.fc2.weight[0, 0] += 1
    report = verdict(pipe)
    assert not report["verified"] and report["first_difference"] == "encoder.layers.2.mlp.fc2.weight"


# ---------------------------------------------------------------------------------- cheap repeated checks


def test_a_cached_check_sees_an_in_place_change(swapped):
    assert verify_encoder(swapped, cached=True).verified
    assert verify_encoder(swapped, cached=True).verified
    with torch.no_grad():
        swapped.encoder.layers[0].self_attn.q_proj.bias.add_(1)
    found = verify_encoder(swapped, cached=True)
    assert not found.verified and found.first_difference == "encoder.layers.0.self_attn.q_proj.bias"


# ---------------------------------------------------------------------------------- make_safe's arguments and failures


@pytest.mark.parametrize("bad", [torch.int8, "int8", 123], ids=["torch.int8", "'int8'", "123"])
def test_a_bad_torch_dtype_is_a_safe_encoders_error_naming_the_argument(safe_file, bad):
    encoder = tiny_text_encoder(seed=0)
    with pytest.raises(InvalidArgumentError, match=r"torch_dtype=.* use one of .*float16"):
        make_safe(encoder, safe_file, torch_dtype=bad)
    assert not is_safe(encoder)


@pytest.mark.parametrize("bad", [123, None, object()], ids=["123", "None", "object()"])
def test_a_bad_checkpoint_is_a_safe_encoders_error_naming_the_argument(bad):
    encoder = tiny_text_encoder(seed=0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with pytest.raises(SafeEncodersError, match=r"checkpoint=.* make_safe accepts 'auto', a registry name"):
        make_safe(encoder, bad)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_a_keyboard_interrupt_inside_the_copy_restores_the_original_weights(monkeypatch, safe_file):
    import safe_encoders.mapped as mapped
    from safe_encoders.placement import InMemory

    monkeypatch.setattr(mapped, "ENABLED", False)  # every weight copied (mapped weights: test_mapped_weights.py)

    encoder = tiny_text_encoder(seed=0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    write, fill = InMemory.write, InMemory.fill
    calls = {"n": 0}

    def tick():
        calls["n"] += 1
        if calls["n"] == 25:  # halfway through the copy, as Ctrl-C would
            raise KeyboardInterrupt

    def interrupted(self, offset, values):
        tick()
        write(self, offset, values)

    def interrupted_fill(self, fd, start, nbytes):  # a whole tensor read straight from the file
        tick()
        return fill(self, fd, start, nbytes)

    monkeypatch.setattr(InMemory, "write", interrupted)
    monkeypatch.setattr(InMemory, "fill", interrupted_fill)
    with pytest.raises(KeyboardInterrupt):
        make_safe(encoder, safe_file)
    assert calls["n"] > 25  # the restore wrote the originals back
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not is_safe(encoder)
