"""make_safe points eligible weights at a private memory map of the checked checkpoint instead of writing them.

As `from_pretrained` leaves a model: each plain CPU weight stored in its own dtype becomes its slice of
a copy-on-write map of the checkpoint file (no byte written, no rollback copy). A failure at any step
puts every tensor the weights held back, bit for bit; a checkpoint changed after its check is never
mapped; tied or shared storage, casts and offloaded weights take the copying path and stay correct.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import safe_encoders.mapped as mapped
from safe_encoders import export_encoder, is_safe, load_text_encoder, make_safe, trust_checkpoint
from safe_encoders.errors import SwapVerificationError
from safe_encoders.origins import MappedFiles
from safe_encoders.sources.encoder_source import EncoderSource
from safe_encoders.streaming import file_identity, safetensors_spans
from safe_encoders.swap import Rollback
from tests.tiny_models import tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 5])
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    tiny_text_encoder(seed=0).save_pretrained(folder)
    return folder


def from_file(folder):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(folder)


def run(encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(IDS).last_hidden_state


def weights(encoder) -> dict[str, torch.Tensor]:
    return {k: v for k, v in encoder.state_dict(keep_vars=True).items() if not k.endswith("position_ids")}


def snapshot(encoder) -> dict[str, tuple[torch.Tensor, int, torch.Tensor]]:
    """Each weight: its tensor object, the address of its memory, a copy of its bits."""
    return {k: (v, v.data_ptr(), v.detach().clone()) for k, v in weights(encoder).items()}


def restored(encoder, before) -> bool:
    """Every weight is the same tensor object on the same memory with the same bits as in `before`."""
    now = weights(encoder)
    return now.keys() == before.keys() and all(
        now[k] is obj
        and now[k].data_ptr() == ptr
        and torch.equal(now[k].detach().view(torch.uint8), bits.view(torch.uint8))
        for k, (obj, ptr, bits) in before.items()
    )


def mapped_keys(encoder, path) -> set[str]:
    """Keys whose memory is, at the right offset, a private map of checkpoint `path` (from /proc/self/maps)."""
    spans = {name.removeprefix("text_model."): span for name, span in safetensors_spans(path).items()}
    maps = MappedFiles()
    found = set()
    try:
        for key, tensor in weights(encoder).items():
            origin = maps.origin(tensor.detach())
            if origin is not None and os.path.samefile(origin.file.path, path) and origin.start == spans[key].start:
                found.add(key)
    finally:
        maps.close()
    return found


@pytest.mark.parametrize("loaded", [True, False], ids=["from_pretrained", "random init"])
def test_first_make_safe_maps_every_weight_from_the_checked_file(saved, safe_file, loaded, monkeypatch):
    import safe_encoders.swap as swap

    monkeypatch.setattr(swap.tempfile, "TemporaryFile", lambda *a, **k: pytest.fail("a rollback copy was written"))
    encoder = from_file(saved) if loaded else tiny_text_encoder(seed=0)
    parameters = dict(encoder.named_parameters())
    make_safe(encoder, safe_file)
    assert mapped_keys(encoder, safe_file) == set(weights(encoder))
    assert dict(encoder.named_parameters()) == parameters and all(  # the same Parameter objects
        parameters[k] is p for k, p in encoder.named_parameters()
    )
    assert torch.equal(run(encoder), run(load_text_encoder(safe_file)))
    assert is_safe(encoder) and not is_safe(encoder, verify=True)
    trust_checkpoint(safe_file)
    assert is_safe(encoder, verify=True)


def test_a_write_to_the_mapped_weights_never_reaches_the_file(safe_file, tmp_path):
    copy = Path(shutil.copy(safe_file, tmp_path / "text.safetensors"))
    content = copy.read_bytes()
    encoder = make_safe(tiny_text_encoder(seed=0), copy)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.fill_(1.5)
    assert copy.read_bytes() == content  # copy-on-write: the checkpoint is untouched


def test_the_mapping_outlives_the_file_name(safe_file, tmp_path):
    copy = Path(shutil.copy(safe_file, tmp_path / "text.safetensors"))
    encoder = make_safe(tiny_text_encoder(seed=0), copy)
    expected = run(load_text_encoder(copy))
    copy.unlink()
    assert torch.equal(run(encoder), expected)


def test_a_write_into_the_checkpoint_shows_through_and_verify_sees_it(safe_file, tmp_path):
    copy = Path(shutil.copy(safe_file, tmp_path / "text.safetensors"))
    encoder = make_safe(tiny_text_encoder(seed=0), copy)
    trust_checkpoint(copy)
    assert is_safe(encoder, verify=True)
    span = safetensors_spans(copy)["text_model.final_layer_norm.weight"]
    with open(copy, "r+b") as handle:  # in place, as with any model from_pretrained maps from its file
        handle.seek(span.start)
        handle.write(torch.full((2,), 7.0).numpy().tobytes())
    assert encoder.final_layer_norm.weight[0] == 7.0
    assert is_safe(encoder) and not is_safe(encoder, verify=True)


class Boom(MemoryError):
    pass


def fail_on_put(monkeypatch, nth: int, *, after: bool, error: type[BaseException] = Boom):
    """The `nth` weight pointed at the map fails, just before or just after it is pointed."""
    put, count = mapped.Remapped.put, {"n": 0}

    def failing(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == nth and not after:
            raise error("injected")
        result = put(self, *args, **kwargs)
        if count["n"] == nth:
            assert result is not None
            raise error("injected")
        return result

    monkeypatch.setattr(mapped.Remapped, "put", failing)


@pytest.mark.parametrize("loaded", [True, False], ids=["from_pretrained", "random init"])
@pytest.mark.parametrize(
    "step",
    ["before the first", "after the first", "after the 20th", "KeyboardInterrupt after the last", "verification",
     "record"],
)  # fmt: skip
def test_a_failure_at_any_step_puts_every_original_tensor_back(saved, safe_file, monkeypatch, loaded, step):
    encoder = from_file(saved) if loaded else tiny_text_encoder(seed=0)
    count = len(weights(encoder))
    before, output = snapshot(encoder), run(encoder)
    error: type[BaseException] = Boom
    if step == "before the first":
        fail_on_put(monkeypatch, 1, after=False)
    elif step == "after the first":
        fail_on_put(monkeypatch, 1, after=True)
    elif step == "after the 20th":
        fail_on_put(monkeypatch, 20, after=True)
    elif step == "KeyboardInterrupt after the last":
        fail_on_put(monkeypatch, count, after=True, error=KeyboardInterrupt)
        error = KeyboardInterrupt
    elif step == "verification":  # every weight mapped, then the check of the file fails
        monkeypatch.setattr(EncoderSource, "changed_since_validation", lambda self: [Path("the checkpoint")])
        error = SwapVerificationError
    else:
        monkeypatch.setattr(Rollback, "record", lambda *a: (_ for _ in ()).throw(Boom("injected")))
    with pytest.raises(error):
        make_safe(encoder, safe_file)
    assert restored(encoder, before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_a_failure_after_a_cast_and_mapping_restores_the_original_dtype_and_bits(safe_file, monkeypatch):
    encoder = tiny_text_encoder(seed=0).half()  # cast to float32 (the checkpoint's dtype), then mapped
    before, output = snapshot(encoder), run(encoder)
    fail_on_put(monkeypatch, 10, after=True)
    with pytest.raises(Boom):
        make_safe(encoder, safe_file, torch_dtype=torch.float32)
    now = weights(encoder)
    assert all(
        now[k].dtype == torch.float16 and torch.equal(now[k].detach(), bits) for k, (_, _, bits) in before.items()
    )
    assert torch.equal(run(encoder), output) and not is_safe(encoder)


def test_a_cast_to_the_checkpoint_dtype_is_mapped(safe_file):
    encoder = make_safe(tiny_text_encoder(seed=0).half(), safe_file, torch_dtype=torch.float32)
    assert mapped_keys(encoder, safe_file) == set(weights(encoder))
    assert torch.equal(run(encoder), run(load_text_encoder(safe_file)))


@pytest.mark.parametrize("when", ["before mapping", "after the first mapped weight"])
def test_a_checkpoint_changed_after_its_check_is_refused_and_undone(safe_file, tmp_path, monkeypatch, when):
    source_file = Path(shutil.copy(safe_file, tmp_path / "text.safetensors"))
    span = safetensors_spans(source_file)["text_model.final_layer_norm.weight"]

    def tamper():  # checked bytes replaced by unchecked ones, same size
        with open(source_file, "r+b") as handle:
            handle.seek(span.start)
            handle.write(torch.full((4,), float("nan")).numpy().tobytes())

    if when == "before mapping":
        validate = EncoderSource.validate
        monkeypatch.setattr(EncoderSource, "validate", lambda self, names: (validate(self, names), tamper())[0])
        message = r"changed after make_safe checked it \(before it was mapped\)"
    else:
        put = mapped.Remapped.put
        monkeypatch.setattr(mapped.Remapped, "put", lambda self, *a: (put(self, *a), tamper())[0])
        message = r"changed while make_safe was copying it"
    encoder = tiny_text_encoder(seed=0)
    before, output = snapshot(encoder), run(encoder)
    with pytest.raises(SwapVerificationError, match=message):
        make_safe(encoder, source_file)
    assert restored(encoder, before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_a_checkpoint_replaced_by_another_file_is_not_mapped(safe_file, tmp_path, monkeypatch):
    source_file = Path(shutil.copy(safe_file, tmp_path / "text.safetensors"))
    other = export_encoder(tiny_text_encoder(seed=7), tmp_path / "other.safetensors")  # same size, other bytes
    validate = EncoderSource.validate
    monkeypatch.setattr(
        EncoderSource, "validate", lambda self, names: (validate(self, names), os.replace(other, source_file))[0]
    )
    encoder = tiny_text_encoder(seed=0)
    before = snapshot(encoder)
    with pytest.raises(SwapVerificationError, match="before it was mapped"):
        make_safe(encoder, source_file)
    assert restored(encoder, before) and not is_safe(encoder)


def test_weights_sharing_storage_are_written_in_place(safe_file):
    encoder = tiny_text_encoder(seed=0)
    attention = encoder.encoder.layers[0].self_attn
    q, k = attention.q_proj.weight, attention.k_proj.weight
    flat = torch.cat([q.detach().reshape(-1), k.detach().reshape(-1)])  # both on one storage, side by side
    q.data, k.data = flat[: q.numel()].view(q.shape), flat[q.numel() :].view(k.shape)
    make_safe(encoder, safe_file)
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    shared = {"encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.self_attn.k_proj.weight"}
    assert shared.isdisjoint(mapped_keys(encoder, safe_file)) and len(mapped_keys(encoder, safe_file)) > 10
    assert torch.equal(run(encoder), run(load_text_encoder(safe_file))) and is_safe(encoder)


def test_a_weight_whose_storage_another_tensor_of_the_module_uses_is_written_in_place(safe_file):
    encoder = tiny_text_encoder(seed=0)
    weight = encoder.final_layer_norm.weight
    encoder.register_buffer("alias", weight.detach(), persistent=False)  # the whole storage, another name
    make_safe(encoder, safe_file)
    assert "final_layer_norm.weight" not in mapped_keys(encoder, safe_file)
    assert torch.equal(encoder.alias, weight.detach()) and torch.equal(
        weight, load_text_encoder(safe_file).final_layer_norm.weight
    )


def test_a_view_of_a_larger_tensor_is_written_in_place(safe_file):
    encoder = tiny_text_encoder(seed=0)
    weight = encoder.final_layer_norm.weight
    base = torch.zeros(weight.numel() * 2)
    base[: weight.numel()] = weight.detach()
    weight.data = base[: weight.numel()]  # starts its storage but does not fill it
    make_safe(encoder, safe_file)
    assert "final_layer_norm.weight" not in mapped_keys(encoder, safe_file)
    assert torch.equal(base[: weight.numel()], load_text_encoder(safe_file).final_layer_norm.weight)


@pytest.mark.parametrize("change", ["dtype", "shape", "misaligned", "offloaded"])
def test_put_leaves_a_weight_it_cannot_serve_unchanged(safe_file, change):
    from dataclasses import replace

    from safe_encoders.placement import InMemory

    encoder = tiny_text_encoder(seed=0)
    key = "final_layer_norm.weight"
    span = safetensors_spans(safe_file)[f"text_model.{key}"]
    home = InMemory(key, lambda: encoder.final_layer_norm.weight)
    if change == "dtype":
        span = replace(span, dtype=torch.int32)
    elif change == "shape":
        span = replace(span, shape=(span.shape[0] // 2, 2))
    elif change == "misaligned":
        span = replace(span, start=span.start + 2, end=span.end + 2)
    else:
        home = InMemory(key, home.get, where="accelerate offload (memory)")
    before = snapshot(encoder)
    remapped = mapped.Remapped()
    assert remapped.put(encoder, key, home, span, file_identity(safe_file)) is None
    assert restored(encoder, before)


def test_a_half_precision_encoder_takes_the_copying_path(safe_file):
    encoder = make_safe(tiny_text_encoder(seed=0).half(), safe_file)  # float32 checkpoint
    assert not mapped_keys(encoder, safe_file)
    assert torch.equal(run(encoder), run(load_text_encoder(safe_file, torch_dtype=torch.float16)))


def test_a_file_that_cannot_be_memory_mapped_is_copied(safe_file, monkeypatch):
    def no_maps(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap says on a file system without memory maps

    monkeypatch.setattr(mapped.mmap, "mmap", no_maps)
    encoder = make_safe(tiny_text_encoder(seed=0), safe_file)
    assert not mapped_keys(encoder, safe_file)
    assert torch.equal(run(encoder), run(load_text_encoder(safe_file))) and is_safe(encoder)


def test_an_offloaded_encoder_takes_the_copying_path(safe_file):
    from accelerate import cpu_offload

    encoder = tiny_text_encoder(seed=0)
    cpu_offload(encoder, execution_device=torch.device("cpu"))
    make_safe(encoder, safe_file)
    assert torch.equal(run(encoder), run(load_text_encoder(safe_file))) and is_safe(encoder)


_MEASURE = """
import json, re, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from safe_encoders import make_safe, trust_checkpoint
from tests.tiny_models import tiny_text_encoder
checkpoint, folder = sys.argv[1:3]
if folder:
    from transformers import CLIPTextModel
    encoder = CLIPTextModel.from_pretrained(folder)
else:
    encoder = tiny_text_encoder(seed=0, hidden=384, layers=2)
trust_checkpoint(checkpoint)  # the check is remembered: make_safe reads no tensor to check it
with torch.no_grad():
    total = sum(float(p.sum()) for p in encoder.parameters())  # every page of the weights resident
status = lambda field: int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the present RSS
before = status("VmRSS")
make_safe(encoder, checkpoint)
size = sum(p.numel() * p.element_size() for p in encoder.parameters())
print(json.dumps({"rise": status("VmHWM") - before, "size": size}))
"""


@pytest.mark.parametrize("loaded", [True, False], ids=["from_pretrained", "random init"])
def test_make_safe_adds_almost_nothing_to_peak_memory(tmp_path, loaded):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    checkpoint = export_encoder(tiny_text_encoder(seed=1, hidden=384, layers=2), tmp_path / "safe.safetensors")
    folder = ""
    if loaded:
        tiny_text_encoder(seed=0, hidden=384, layers=2).save_pretrained(tmp_path / "saved")
        folder = str(tmp_path / "saved")
    time.sleep(max(0.0, 2.1 - (time.time() - checkpoint.stat().st_ctime)))  # old enough to be remembered
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAFE_ENCODERS_TRUST_DIR": str(tmp_path / "trust")}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(checkpoint), folder],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["rise"] <= 0.05 * measured["size"], measured
