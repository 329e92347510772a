"""Encoders inside wrappers: torch.compile is seen through; LoRA-injected and quantized encoders are refused
(with what to do), before anything is written."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from safe_encoders import (
    UnsupportedModelError,
    export_encoder,
    is_safe,
    load_text_encoder,
    make_safe,
    swap_report,
    trust_checkpoint,
)
from tests.tiny_models import tiny_sd_pipeline, tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


def output(encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(IDS).last_hidden_state


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_compiled_encoder_is_swapped_through_orig_mod_and_runs_the_checkpoint(safe_file):
    compiled = torch.compile(tiny_text_encoder(seed=0), backend="eager")
    output(compiled)  # compiled once with the original weights
    make_safe(compiled, safe_file)
    trust_checkpoint(safe_file)  # a local file is trusted only when the user says so
    expected = output(load_text_encoder(safe_file, with_projection=False))
    assert torch.equal(output(compiled), expected)
    assert is_safe(compiled, verify=True)
    assert swap_report(compiled)["OptimizedModule"]["checkpoint"] == str(safe_file)


def test_a_compiled_text_encoder_inside_a_pipeline(safe_file):
    pipe = tiny_sd_pipeline("v1")
    pipe.text_encoder = torch.compile(pipe.text_encoder, backend="eager")
    make_safe(pipe, safe_file)
    trust_checkpoint(safe_file)
    assert torch.equal(output(pipe.text_encoder), output(load_text_encoder(safe_file, with_projection=False)))
    assert is_safe(pipe, verify=True)


def test_lora_injected_text_encoder_is_refused_with_the_fix(safe_file):
    from peft import LoraConfig, inject_adapter_in_model

    pipe = tiny_sd_pipeline("v1")
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    inject_adapter_in_model(config, pipe.text_encoder)  # how LoRA layers get into a text encoder
    before = state(pipe.text_encoder)
    with pytest.raises(UnsupportedModelError, match=r"pipe.text_encoder has LoRA adapter layers injected .*"
                       r"pipe.unload_lora_weights\(\)"):  # fmt: skip
        make_safe(pipe, safe_file)
    assert same(state(pipe.text_encoder), before) and not is_safe(pipe)


def test_dynamically_quantized_encoder_is_refused_naming_the_quantization(safe_file):
    encoder = torch.ao.quantization.quantize_dynamic(tiny_text_encoder(seed=0), {nn.Linear}, dtype=torch.qint8)
    before = output(encoder)
    message = (
        r"is quantized with torch dynamic/static quantization \(torch.ao.quantization\): "
        r"encoder.layers.0.self_attn.k_proj is a torch.ao.nn.quantized"
    )
    with pytest.raises(UnsupportedModelError, match=message):
        make_safe(encoder, safe_file)
    assert torch.equal(output(encoder), before) and not is_safe(encoder)
