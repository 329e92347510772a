"""make_safe on a model loaded from a safetensors file: the originals are restored from that file, not copied.

A model transformers loads from a safetensors file holds its weights as a private memory map of that
file. Proven equal to the file before anything is written, they are restored from it after a
failure (bit for bit, no rollback copy written); a weight that differs from its file is copied; a
file that changed before the restore is reported, never silently mixed in; a checkpoint that
changes while it is copied is caught and undone. (Most tests are of the path that writes the new
weights, `copy_path`; a weight make_safe maps from its checkpoint instead gets its old tensor back:
test_mapped_weights.py.)
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from safe_encoders import export_encoder, is_safe, make_safe
from safe_encoders.errors import SwapVerificationError
from safe_encoders.origins import MappedFiles
from safe_encoders.placement import PLACEMENTS, InMemory, Placement, _accelerate_home, _materialised_home
from safe_encoders.sources.encoder_source import EncoderSource
from safe_encoders.streaming import safetensors_spans
from tests.tiny_models import tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 5])


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    tiny_text_encoder(seed=0).save_pretrained(folder)
    return folder


def from_file(saved):
    """The encoder as users load it: from_pretrained, its weights memory-mapped from model.safetensors."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(saved)
    maps = MappedFiles()
    try:
        assert all(maps.origin(p.detach()) is not None for p in encoder.parameters()), "not memory-mapped"
    finally:
        maps.close()
    return encoder


def run(encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(IDS).last_hidden_state


def state(encoder) -> dict[str, torch.Tensor]:
    """Every weight as the forward reads it (through offload hooks)."""
    from safe_encoders.placement import locate

    keys = [k for k in encoder.state_dict() if not k.endswith("position_ids")]
    return {key: home.read().detach().clone() for key, home in locate(encoder, keys, "encoder").items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


@pytest.fixture
def copy_path(monkeypatch):
    """make_safe writes every weight into the memory it has (none is pointed at a map of the checkpoint)."""
    import safe_encoders.mapped as mapped

    monkeypatch.setattr(mapped, "ENABLED", False)


@pytest.fixture
def no_rollback_copy(monkeypatch):
    """Any attempt to spill original weights to a temporary file fails the test."""
    import safe_encoders.swap as swap

    def refuse(*args, **kwargs):
        raise AssertionError("a rollback copy was written")

    monkeypatch.setattr(swap.tempfile, "TemporaryFile", refuse)


def failing_after(writes: int, before_failing=lambda: None):
    """A placement of plain parameters whose `writes`-th write (or whole-tensor fill) fails, once."""
    count = {"n": 0}

    def tick():
        count["n"] += 1
        if count["n"] == writes:
            before_failing()
            raise MemoryError("injected: out of memory halfway through the swap")

    class Failing(InMemory):
        def write(self, offset, values):
            tick()
            super().write(offset, values)

        def fill(self, fd, start, nbytes):
            tick()
            return super().fill(fd, start, nbytes)

    def home(context, key, tensor):
        found = _accelerate_home(context, key, tensor) or _materialised_home(context, key, tensor)
        return Failing(found.key, found.get, found.where) if isinstance(found, InMemory) else found

    return Placement("fails halfway", home)


@pytest.fixture
def failing_placement():
    added = []

    def add(placement):
        PLACEMENTS.insert(0, placement)
        added.append(placement)

    yield add
    for placement in added:
        PLACEMENTS.remove(placement)


@pytest.mark.parametrize("mapping", [True, False], ids=["mapped", "written"])
def test_a_model_loaded_from_its_file_is_swapped_with_no_copy_of_its_weights(saved, safe_file, no_rollback_copy,
                                                                             monkeypatch, mapping):  # fmt: skip
    import safe_encoders.mapped as mapped

    monkeypatch.setattr(mapped, "ENABLED", mapping)
    encoder = from_file(saved)
    make_safe(encoder, safe_file)
    assert is_safe(encoder)


@pytest.mark.parametrize("offload", [False, True], ids=["parameters", "accelerate cpu_offload"])
def test_a_failure_mid_copy_restores_it_from_its_file_bit_for_bit(saved, safe_file, no_rollback_copy, copy_path,
                                                                   failing_placement, offload):  # fmt: skip
    encoder = from_file(saved)
    if offload:  # the weights now live in the offload hooks' map: the same memory-mapped tensors
        from accelerate import cpu_offload

        cpu_offload(encoder, execution_device=torch.device("cpu"))
        assert all(p.device.type == "meta" for p in encoder.parameters())
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=30))
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_a_weight_changed_since_loading_is_restored_to_its_changed_value(saved, safe_file, failing_placement,
                                                                         copy_path):  # fmt: skip
    encoder = from_file(saved)
    with torch.no_grad():
        encoder.final_layer_norm.weight[3] += 0.5  # no longer the file's bytes
        encoder.embeddings.token_embedding.weight[7, 1] = -0.0
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=len(list(encoder.parameters()))))  # on the last tensor
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)


def test_a_file_changed_before_the_restore_is_reported_not_mixed_in(saved, tmp_path, safe_file, failing_placement,
                                                                     copy_path):  # fmt: skip
    folder = tmp_path / "saved"
    shutil.copytree(saved, folder)
    encoder = from_file(folder)
    weights = folder / "model.safetensors"
    touch = lambda: os.utime(weights, ns=(1, 1))  # noqa: E731  (a write to the file changes its ctime the same way)
    failing_placement(failing_after(writes=30, before_failing=touch))
    with pytest.raises(SwapVerificationError, match=r"could not be restored: .*changed during make_safe") as caught:
        make_safe(encoder, safe_file)
    assert isinstance(caught.value.__context__, MemoryError)
    assert not is_safe(encoder)


def test_a_checkpoint_changed_while_it_is_copied_is_caught_and_undone(saved, tmp_path, safe_file, monkeypatch,
                                                                      copy_path):  # fmt: skip
    source_file = shutil.copy(safe_file, tmp_path / "text.safetensors")
    encoder = from_file(saved)
    before, output = state(encoder), run(encoder)
    validate = EncoderSource.validate

    def validate_then_tamper(self, names):
        digests = validate(self, names)
        span = safetensors_spans(source_file)["text_model.final_layer_norm.weight"]
        with open(source_file, "r+b") as handle:  # checked bytes replaced by unchecked ones, same size
            handle.seek(span.start)
            handle.write(torch.full((4,), float("nan")).numpy().tobytes())
        return digests

    monkeypatch.setattr(EncoderSource, "validate", validate_then_tamper)
    with pytest.raises(SwapVerificationError, match=r"changed while make_safe was copying it"):
        make_safe(encoder, source_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_only_private_maps_count_as_a_place_to_restore_from(tmp_path):
    path = tmp_path / "weights.bin"
    torch.arange(1024, dtype=torch.float32).numpy().tofile(path)
    maps = MappedFiles.__new__(MappedFiles)  # read /proc/self/maps only once both maps exist
    private = torch.from_file(str(path), shared=False, size=1024, dtype=torch.float32)
    shared = torch.from_file(str(path), shared=True, size=1024, dtype=torch.float32)
    maps.__init__()
    try:
        assert maps.origin(private) is not None
        assert maps.origin(shared) is None  # our writes into it would change the file itself
    finally:
        maps.close()
