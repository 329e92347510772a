"""make_safe writes where the forward reads, whatever holds the weights, and proves it (verify=True).

Each placement: the swapped encoder's output equals the checkpoint loaded with `load_text_encoder`, and
`is_safe(..., verify=True)` holds. Refusals and failures leave the model bit-identical to before.
"""

from __future__ import annotations

import pytest
import torch

from safe_encoders import (
    CorruptCheckpointError,
    UnsupportedModelError,
    export_encoder,
    is_safe,
    load_text_encoder,
    make_safe,
    swap_report,
    trust_checkpoint,
)
from safe_encoders.errors import SwapVerificationError
from safe_encoders.format import write_encoder_file
from safe_encoders.placement import PLACEMENTS, InMemory, Placement
from tests.tiny_models import tiny_sd_pipeline, tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 5])


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    """The checkpoint to swap in: a tiny text encoder with other weights than the targets (seed 0)."""
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


@pytest.fixture(autouse=True)
def trusted_safe_file(safe_file):
    """The checkpoint is a local file: verify=True accepts it only because the user (this test) trusts it."""
    trust_checkpoint(safe_file)


@pytest.fixture(scope="module")
def expected(safe_file):
    with torch.no_grad():
        return load_text_encoder(safe_file, with_projection=False)(IDS).last_hidden_state


def run(encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(IDS).last_hidden_state


def live_state(encoder) -> dict[str, torch.Tensor]:
    """Every weight as the forward reads it (through hooks): the values of a forward pass's parameters."""
    from safe_encoders.placement import locate

    keys = [k for k in encoder.state_dict() if not k.endswith("position_ids")]
    homes = locate(getattr(encoder, "_orig_mod", encoder), keys, "encoder")
    return {key: homes[key].read().detach().to("cpu").clone() for key in keys}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


# ------------------------------------------------------------------------------------- placements


def _plain(tmp_path):
    return tiny_text_encoder(seed=0)


def _cpu_offload(tmp_path):
    from accelerate import cpu_offload

    encoder = tiny_text_encoder(seed=0)
    cpu_offload(encoder, execution_device=torch.device("cpu"))
    assert all(p.device.type == "meta" for p in encoder.parameters())
    return encoder


def _disk_offload(tmp_path):
    from accelerate import disk_offload

    encoder = tiny_text_encoder(seed=0)
    disk_offload(encoder, tmp_path / "offload", execution_device=torch.device("cpu"))
    assert all(p.device.type == "meta" for p in encoder.parameters())
    return encoder


def _device_map_disk(tmp_path):
    from transformers import CLIPTextModel

    tiny_text_encoder(seed=0).save_pretrained(tmp_path / "saved")
    device_map = {"embeddings": "cpu", "encoder.layers.0": "cpu", "encoder.layers.1": "disk",
                  "encoder.layers.2": "disk", "final_layer_norm": "disk"}  # fmt: skip
    encoder = CLIPTextModel.from_pretrained(
        tmp_path / "saved", device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    assert encoder.final_layer_norm.weight.device.type == "meta"
    return encoder


def _group_offload(**kwargs):
    def build(tmp_path):
        from diffusers.hooks import apply_group_offloading

        encoder = tiny_text_encoder(seed=0)
        if "offload_to_disk_path" in kwargs:
            kwargs["offload_to_disk_path"] = str(tmp_path / "groups")
        apply_group_offloading(encoder, onload_device=torch.device("cpu"), **kwargs)
        run(encoder)  # the groups offload after a first forward too
        return encoder

    return build


PLACEMENT_CASES = {
    "parameters": _plain,
    "accelerate cpu_offload": _cpu_offload,
    "accelerate disk_offload": _disk_offload,
    "transformers device_map with disk": _device_map_disk,
    "diffusers group offload, blocks": _group_offload(offload_type="block_level", num_blocks_per_group=1),
    "diffusers group offload, leaves": _group_offload(offload_type="leaf_level"),
    "diffusers group offload to disk, blocks": _group_offload(
        offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=""
    ),
    "diffusers group offload to disk, leaves": _group_offload(offload_type="leaf_level", offload_to_disk_path=""),
}


@pytest.mark.parametrize("case", list(PLACEMENT_CASES))
def test_every_placement_runs_the_checkpoint_after_make_safe(case, tmp_path, safe_file, expected):
    encoder = PLACEMENT_CASES[case](tmp_path)
    before = run(encoder)
    assert not torch.equal(before, expected)
    make_safe(encoder, safe_file)
    assert torch.equal(run(encoder), expected)
    assert is_safe(encoder, verify=True)
    assert torch.equal(run(encoder), expected)  # and again: nothing was a one-off


def test_device_map_disk_never_writes_into_the_models_own_checkpoint(tmp_path, safe_file, expected):
    encoder = _device_map_disk(tmp_path)
    weights = tmp_path / "saved" / "model.safetensors"
    original = weights.read_bytes()
    make_safe(encoder, safe_file)
    assert weights.read_bytes() == original
    assert torch.equal(run(encoder), expected)


def test_diffusers_model_cpu_offload_runs_the_checkpoint(safe_file, expected):
    pipe = tiny_sd_pipeline("v1")
    pipe.enable_model_cpu_offload(device="cpu")
    make_safe(pipe, safe_file)
    assert torch.equal(run(pipe.text_encoder), expected)
    assert is_safe(pipe, verify=True)


def test_diffusers_sequential_cpu_offload_holds_the_checkpoint_where_its_hooks_read(safe_file):
    pipe = tiny_sd_pipeline("v1")
    pipe.enable_sequential_cpu_offload(device="cpu")  # offloads to "cpu:0", which it cannot run on without a GPU
    assert all(p.device.type == "meta" for p in pipe.text_encoder.parameters())
    make_safe(pipe, safe_file)
    reference = load_text_encoder(safe_file, with_projection=False)
    assert same(live_state(pipe.text_encoder), live_state(reference))  # what its pre-forward hooks will load
    assert is_safe(pipe, verify=True)


def test_pipeline_group_offload_to_disk_runs_the_checkpoint(tmp_path, safe_file, expected):
    pipe = tiny_sd_pipeline("v1")
    pipe.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="leaf_level", offload_to_disk_path=str(tmp_path / "groups")
    )
    make_safe(pipe, safe_file)
    assert torch.equal(run(pipe.text_encoder), expected)
    assert is_safe(pipe, verify=True)


# ------------------------------------------------------------------------------------ verification


def test_verify_catches_one_changed_element(safe_file):
    encoder = make_safe(tiny_text_encoder(seed=0), safe_file)
    assert swap_report(encoder, verify=True)["CLIPTextModel"]["verified"] is True
    with torch.no_grad():
        encoder.encoder.layers[1].mlp.fc2.weight[3, 4] += 1e-3
    report = swap_report(encoder, verify=True)["CLIPTextModel"]
    assert report["verified"] is False
    assert report["first_difference"] == "encoder.layers.1.mlp.fc2.weight"
    assert is_safe(encoder) and not is_safe(encoder, verify=True)


def test_verify_catches_a_change_in_a_disk_offloaded_file(tmp_path, safe_file):
    import numpy as np

    encoder = make_safe(_disk_offload(tmp_path), safe_file)
    assert is_safe(encoder, verify=True)
    dat = tmp_path / "offload" / "encoder.layers.2.self_attn.v_proj.bias.dat"
    values = np.memmap(dat, dtype=np.float32, mode="r+")
    values[7] += 1.0
    values.flush()
    del values
    report = swap_report(encoder, verify=True)["CLIPTextModel"]
    assert (report["verified"], report["first_difference"]) == (False, "encoder.layers.2.self_attn.v_proj.bias")


def test_an_encoder_reloaded_with_its_original_weights_is_not_verified(safe_file):
    encoder = tiny_text_encoder(seed=0)
    original = {k: v.clone() for k, v in encoder.state_dict().items()}
    make_safe(encoder, safe_file)
    encoder.load_state_dict(original)  # the record stays in the config, the weights are back
    assert is_safe(encoder) and not is_safe(encoder, verify=True)
    make_safe(encoder, safe_file)  # the same checkpoint again: not a no-op, since the weights differ
    assert is_safe(encoder, verify=True)


def _copying_offload_home(context, key, tensor):
    """What make_safe used to do with disk offload: write into a copy the forward never reads."""
    from safe_encoders.placement import _accelerate_home

    home = _accelerate_home(context, key, tensor)
    if home is None:
        return None
    # Each write goes into the tensor the loader returns, which it reads afresh from disk every time.
    return InMemory(key, home.read, where="the tensor the offload loader returned")


@pytest.mark.parametrize("stored", ["float32", "float16"], ids=["read whole from the file", "cast slice by slice"])
def test_a_write_the_forward_never_sees_is_caught_and_undone(tmp_path, safe_file, stored):
    if stored == "float16":  # stored in another dtype than the live one: copied (and checked) a slice at a time
        safe_file = export_encoder(tiny_text_encoder(seed=123).half(), tmp_path / "half.safetensors")
        trust_checkpoint(safe_file)
    encoder = _disk_offload(tmp_path)
    before, output = live_state(encoder), run(encoder)
    PLACEMENTS.insert(0, Placement("broken: writes into a copy", _copying_offload_home))
    try:
        with pytest.raises(SwapVerificationError, match=r"as the forward reads it .* is not the checkpoint's"):
            make_safe(encoder, safe_file)
    finally:
        PLACEMENTS.pop(0)
    assert same(live_state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


# ------------------------------------------------------------------------- validate, then mutate


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("nan", r"NaN or Inf"),
        ("inf", r"NaN or Inf"),
        ("-inf", r"NaN or Inf"),
        ("int8", r"torch.int8, not a floating-point weight"),
    ],
)
def test_bad_source_values_are_refused_with_the_model_unchanged(tmp_path, bad, message):
    from safe_encoders.format import canonical_name

    source = tiny_text_encoder(seed=9)
    tensors = {canonical_name(k, "text"): v for k, v in source.state_dict().items() if "position_ids" not in k}
    name = "text_model.encoder.layers.2.mlp.fc1.weight"  # late in the file: the earlier tensors are fine
    if bad == "int8":
        tensors[name] = tensors[name].to(torch.int8)
    else:
        tensors[name] = tensors[name].clone()
        tensors[name][1, 2] = float(bad)
    # Consistent digests: only the values are bad.
    path, _ = write_encoder_file(tmp_path / "bad.safetensors", tensors, kind="text", config=source.config.to_dict(),
                              base_model=None, provenance={})  # fmt: skip
    encoder = tiny_text_encoder(seed=0)
    before = live_state(encoder)
    with pytest.raises(CorruptCheckpointError, match=message):
        make_safe(encoder, path)
    assert same(live_state(encoder), before) and not is_safe(encoder)


def test_a_part_meta_target_is_refused_untouched(safe_file):
    encoder = tiny_text_encoder(seed=0)
    encoder.final_layer_norm.to("meta")
    before = {k: v.clone() for k, v in encoder.state_dict().items() if v.device.type != "meta"}
    with pytest.raises(UnsupportedModelError, match=r"no values make_safe can reach, e.g. \['final_layer_norm"):
        make_safe(encoder, safe_file)
    after = {k: v for k, v in encoder.state_dict().items() if v.device.type != "meta"}
    assert same(after, before) and not is_safe(encoder)


def _failing_home(after_writes: int):
    """A home that fails (as a hook or an allocation can) on its owner's `after_writes`-th write."""
    from safe_encoders.placement import _materialised_home

    count = {"writes": 0}

    def tick():
        count["writes"] += 1
        if count["writes"] == after_writes + 1:  # once: the writes that restore the originals succeed
            raise MemoryError("injected: out of memory halfway through the swap")

    class Failing(InMemory):
        def write(self, offset, values):
            tick()
            super().write(offset, values)

        def fill(self, fd, start, nbytes):  # a whole tensor read straight from the checkpoint is a write too
            tick()
            return super().fill(fd, start, nbytes)

    def home(context, key, tensor):
        plain = _materialised_home(context, key, tensor)
        return None if plain is None else Failing(plain.key, plain.get)

    return home


@pytest.mark.parametrize("torch_dtype", [None, torch.bfloat16], ids=["same dtype", "cast to bf16"])
def test_a_failure_after_the_first_write_restores_the_model_bit_for_bit(safe_file, torch_dtype, monkeypatch):
    import safe_encoders.mapped as mapped

    monkeypatch.setattr(mapped, "ENABLED", False)  # every weight written (mapped weights: test_mapped_weights.py)
    encoder = tiny_text_encoder(seed=0)
    before, output = live_state(encoder), run(encoder)
    PLACEMENTS.insert(0, Placement("fails halfway", _failing_home(after_writes=40)))
    try:
        with pytest.raises(MemoryError, match="injected"):
            make_safe(encoder, safe_file, torch_dtype=torch_dtype)
    finally:
        PLACEMENTS.pop(0)
    assert same(live_state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_a_failure_on_a_disk_offloaded_encoder_restores_its_files(tmp_path, safe_file):
    encoder = _disk_offload(tmp_path)
    before, output = live_state(encoder), run(encoder)
    calls = {"n": 0}

    def failing_dat(context, key, tensor):
        from safe_encoders.placement import DatFile, _accelerate_home

        home = _accelerate_home(context, key, tensor)
        calls["n"] += 1
        if isinstance(home, DatFile) and calls["n"] == 30:
            write = home.write
            state = {"failed": False}

            def fail_once(offset, values):
                if not state["failed"]:
                    state["failed"] = True
                    raise OSError("injected: disk full")
                write(offset, values)

            home.write = fail_once
        return home

    PLACEMENTS.insert(0, Placement("disk full halfway", failing_dat))
    try:
        with pytest.raises(OSError, match="disk full"):
            make_safe(encoder, safe_file)
    finally:
        PLACEMENTS.pop(0)
    assert same(live_state(encoder), before) and torch.equal(run(encoder), output)


def test_torch_dtype_on_an_offloaded_encoder_is_refused_untouched(tmp_path, safe_file):
    encoder = _cpu_offload(tmp_path)
    before = live_state(encoder)
    with pytest.raises(UnsupportedModelError, match=r"offloaded .*torch_dtype cannot change it in place"):
        make_safe(encoder, safe_file, torch_dtype="float16")
    assert same(live_state(encoder), before)


@pytest.mark.parametrize("spelling", [torch.float16, "float16", "torch.float16"])
def test_torch_dtype_spellings(spelling, safe_file):
    encoder = make_safe(tiny_text_encoder(seed=0), safe_file, torch_dtype=spelling)
    assert {p.dtype for p in encoder.parameters()} == {torch.float16}
    assert is_safe(encoder, verify=True)
    reference = load_text_encoder(safe_file, torch_dtype="float16", with_projection=False)
    assert same(live_state(encoder), live_state(reference))


def test_torch_dtype_auto_keeps_and_a_bad_one_names_the_choices(safe_file):
    encoder = make_safe(tiny_text_encoder(seed=0).to(torch.bfloat16), safe_file, torch_dtype="auto")
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match=r"torch_dtype='int8' .*bfloat16, double, float, float16"):
        make_safe(tiny_text_encoder(seed=0), safe_file, torch_dtype="int8")
    with pytest.raises(ValueError, match=r"torch_dtype='fp16'"):
        load_text_encoder(safe_file, torch_dtype="fp16")


def test_a_saved_and_reloaded_swapped_encoder_still_verifies(tmp_path, safe_file):
    from transformers import CLIPTextModel

    make_safe(tiny_text_encoder(seed=0), safe_file).save_pretrained(tmp_path / "saved")
    reloaded = CLIPTextModel.from_pretrained(tmp_path / "saved")
    assert is_safe(reloaded, verify=True)
    with torch.no_grad():
        reloaded.final_layer_norm.bias[0] = 5.0
    assert swap_report(reloaded, verify=True)["CLIPTextModel"]["first_difference"] == "final_layer_norm.bias"


def test_group_offload_to_disk_whose_file_is_gone_is_refused_untouched(tmp_path, safe_file):
    encoder = PLACEMENT_CASES["diffusers group offload to disk, leaves"](tmp_path)
    files = sorted((tmp_path / "groups").glob("*.safetensors"))
    files[-1].unlink()
    kept = {path: path.read_bytes() for path in files[:-1]}
    with pytest.raises(UnsupportedModelError, match=r"group offloaded to disk whose file .* does not exist"):
        make_safe(encoder, safe_file)
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert not is_safe(encoder)
