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

from safe_encoders import export_encoder, is_safe, make_safe, trust_checkpoint
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
    bits = lambda t: t.contiguous().view(torch.uint8)  # noqa: E731
    return a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)


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
    with pytest.raises(SwapVerificationError, match=r"changed while (make_safe was copying it|it was being read)"):
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


def tied(encoder):
    """`encoder` with two weights of its first layer tied: one parameter under two state-dict keys (one memory)."""
    attention = encoder.encoder.layers[0].self_attn
    attention.k_proj.weight = attention.q_proj.weight
    return encoder


def test_tied_weights_the_checkpoint_gives_two_values_are_refused_and_undone(safe_file):
    # The checkpoint holds different q and k: the tied memory can hold only one, so q as the forward reads it
    # is not what the record would say was installed.
    encoder = tied(tiny_text_encoder(seed=0))
    before, output = state(encoder), run(encoder)
    with pytest.raises(SwapVerificationError, match=r"self_attn\.[kq]_proj\.weight as the forward reads it"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_tied_weights_the_checkpoint_also_ties_are_swapped(tmp_path):
    source = tiny_text_encoder(seed=123)
    attention = source.encoder.layers[0].self_attn
    with torch.no_grad():  # equal values in two tensors of the file (safetensors refuses to save shared memory)
        attention.k_proj.weight.copy_(attention.q_proj.weight)
    safe = export_encoder(source, tmp_path / "tied.safetensors")
    trust_checkpoint(safe)
    encoder = tied(tiny_text_encoder(seed=0))
    make_safe(encoder, safe)
    assert is_safe(encoder, verify=True) and torch.equal(run(encoder), run(source))


@pytest.mark.parametrize("loaded", ["in memory", "from its file"])
def test_a_failure_after_tied_weights_were_written_restores_them_bit_for_bit(copy_path, saved, safe_file,
                                                                            failing_placement, loaded):  # fmt: skip
    # The second key of a tied pair is saved after the first was written: its "original" is the new value.
    encoder = tied(from_file(saved) if loaded == "from its file" else tiny_text_encoder(seed=0))
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=12))  # after both tied keys of layer 0
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_weights_that_are_views_into_one_buffer_are_swapped_each_in_its_place(safe_file):
    # Packed weights (views at storage offsets, side by side in one buffer) share a storage, not memory.
    encoder = tiny_text_encoder(seed=0)
    attention = encoder.encoder.layers[0].self_attn
    parts = [attention.k_proj.weight, attention.v_proj.weight, attention.q_proj.weight]
    packed = torch.cat([p.detach().reshape(-1) for p in parts])
    offset = 0
    for projection, part in zip([attention.k_proj, attention.v_proj, attention.q_proj], parts, strict=True):
        projection.weight = torch.nn.Parameter(packed[offset : offset + part.numel()].view_as(part))
        offset += part.numel()
    trust_checkpoint(safe_file)
    make_safe(encoder, safe_file)
    assert is_safe(encoder, verify=True)
    expected = tiny_text_encoder(seed=0)
    make_safe(expected, safe_file)
    assert torch.equal(run(encoder), run(expected))


def test_a_file_unreadable_during_the_restore_loses_only_that_weight_and_says_so(
    copy_path, saved, safe_file, failing_placement, monkeypatch
):
    from safe_encoders.origins import FileOrigin

    encoder = from_file(saved)
    before = state(encoder)
    armed, failed, chunks = [], [], FileOrigin.chunks
    failing_placement(failing_after(writes=30, before_failing=lambda: armed.append(True)))  # then restoring

    def unreadable_once(self):
        if armed and not failed and self.numel > 1000:  # one large weight: the disk fails on its read
            failed.append(self)
            raise OSError("injected: input/output error")
        return chunks(self)

    monkeypatch.setattr(FileOrigin, "chunks", unreadable_once)
    with pytest.raises(SwapVerificationError, match=r"original weights of 1 tensor\(s\).*could not be restored"):
        make_safe(encoder, safe_file)
    after = state(encoder)
    differ = [key for key in before if not torch.equal(after[key].view(torch.uint8), before[key].view(torch.uint8))]
    assert len(differ) == 1 and failed  # every other weight is back, bit for bit
    assert not is_safe(encoder)


def transposed_last_weight(encoder):
    """`encoder` with one weight (late in the write order) stored transposed: a non-contiguous parameter."""
    fc2 = encoder.encoder.layers[-1].mlp.fc2
    fc2.weight = torch.nn.Parameter(fc2.weight.detach().t().contiguous().t())
    assert not fc2.weight.is_contiguous()
    return encoder


def test_a_non_contiguous_weight_is_swapped_in_place(safe_file):
    encoder = transposed_last_weight(tiny_text_encoder(seed=0))
    trust_checkpoint(safe_file)
    make_safe(encoder, safe_file)
    expected = make_safe(tiny_text_encoder(seed=0), safe_file)
    assert is_safe(encoder, verify=True) and torch.equal(run(encoder), run(expected))


@pytest.mark.parametrize("torch_dtype", [None, torch.bfloat16], ids=["same dtype", "cast to bf16"])
def test_a_failure_after_a_non_contiguous_weight_was_written_restores_it(
    copy_path, safe_file, failing_placement, torch_dtype
):
    encoder = transposed_last_weight(tiny_text_encoder(seed=0))
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=len(list(encoder.parameters()))))  # on the last tensor, after fc2
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file, torch_dtype=torch_dtype)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)


def failing_once_after(writes: int):
    """A placement of plain parameters that fails right after its `writes`-th write or fill has landed, once."""
    count = {"n": 0}

    def tick():
        count["n"] += 1
        if count["n"] == writes:
            raise MemoryError("injected: a failure just after a write")

    class Failing(InMemory):
        def write(self, offset, values):
            super().write(offset, values)
            tick()

        def fill(self, fd, start, nbytes):
            written = super().fill(fd, start, nbytes)
            tick()
            return written

    def home(context, key, tensor):
        found = _accelerate_home(context, key, tensor) or _materialised_home(context, key, tensor)
        return Failing(found.key, found.get, found.where) if isinstance(found, InMemory) else found

    return Placement("fails after a write", home)


def test_a_failure_after_any_write_of_a_model_loaded_from_its_file_restores_it(
    copy_path, saved, safe_file, no_rollback_copy
):
    encoder = from_file(saved)
    before, output = state(encoder), run(encoder)
    for writes in range(1, len(before) + 1):
        placement = failing_once_after(writes)
        PLACEMENTS.insert(0, placement)
        try:
            with pytest.raises(MemoryError, match="injected"):
                make_safe(encoder, safe_file)
        finally:
            PLACEMENTS.remove(placement)
        assert same(state(encoder), before), f"not restored after a failure after write {writes}"
        assert not is_safe(encoder)
    assert torch.equal(run(encoder), output)


@pytest.mark.parametrize(
    "step",
    ["swap.Rollback.keep_originals", "swap.Rollback.record", "EncoderSource.changed_since_validation"],
)
def test_a_failure_at_a_step_around_the_writes_restores_a_model_loaded_from_its_file(saved, safe_file,
                                                                                     monkeypatch, step):  # fmt: skip
    import safe_encoders.swap as swap

    owner_name, name = step.removeprefix("swap.").split(".")
    owner = {"Rollback": swap.Rollback, "EncoderSource": EncoderSource}[owner_name]
    encoder = from_file(saved)
    before, output = state(encoder), run(encoder)
    original = getattr(owner, name)

    def fails(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise MemoryError(f"injected: {step} failed")

    monkeypatch.setattr(owner, name, fails)
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_weights_rewritten_with_their_own_values_are_still_restored_from_the_file(copy_path, saved, safe_file,
                                                                                  no_rollback_copy,
                                                                                  failing_placement):  # fmt: skip
    # Written in place (each page now a private copy: the page map no longer says "the file's"), same bytes:
    # compared with the file bit for bit, they are still restored from it.
    encoder = from_file(saved)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.mul_(1.0)
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=30))
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_loaded_cast_from_its_fp32_file_is_restored_from_a_copy(saved, safe_file, failing_placement, dtype):
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(saved, dtype=dtype)  # cast while loading: no longer the file's bytes
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=30))
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    encoder = make_safe(encoder, safe_file)
    assert encoder.dtype == dtype and is_safe(encoder)


@pytest.mark.parametrize("stored", [torch.float32, torch.float16], ids=["read whole", "cast by slices"])
def test_a_checkpoint_folder_swapped_while_it_is_copied_is_caught_and_undone(
    copy_path, saved, tmp_path, monkeypatch, stored
):
    # Renaming the folder leaves the checked file's own identity untouched: what is read must be that very file.
    folder, parked, other = tmp_path / "ckpt", tmp_path / "parked", tmp_path / "other"
    folder.mkdir()
    checkpoint = export_encoder(tiny_text_encoder(seed=123).to(stored), folder / "text.safetensors")
    other.mkdir()
    export_encoder(tiny_text_encoder(seed=7).to(stored), other / "text.safetensors")  # valid, same size, others
    encoder = from_file(saved)
    before, output = state(encoder), run(encoder)
    validate, changed = EncoderSource.validate, EncoderSource.changed_since_validation

    def validate_then_swap_folders(self, names):
        digests = validate(self, names)
        folder.rename(parked)
        other.rename(folder)
        return digests

    def swap_back_then_check(self):
        folder.rename(other)
        parked.rename(folder)
        return changed(self)

    monkeypatch.setattr(EncoderSource, "validate", validate_then_swap_folders)
    monkeypatch.setattr(EncoderSource, "changed_since_validation", swap_back_then_check)
    with pytest.raises(SwapVerificationError, match="changed while it was being read"):
        make_safe(encoder, checkpoint)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_a_checkpoint_written_during_the_last_read_is_caught_and_undone(
    copy_path, saved, tmp_path, safe_file, failing_placement
):
    # No later open sees it: only the identity check after the copy does.
    source_file = shutil.copy(safe_file, tmp_path / "text.safetensors")
    encoder = from_file(saved)
    before, output = state(encoder), run(encoder)
    fills, last = {"n": 0}, len(before)

    class WrittenDuringRead(InMemory):
        def fill(self, fd, start, nbytes):
            written = super().fill(fd, start, nbytes)
            fills["n"] += 1
            if fills["n"] == last:
                with open(source_file, "r+b") as handle:  # as another process would, while this read ran
                    handle.seek(start)
                    handle.write(torch.full((1,), float("nan")).numpy().tobytes())
            return written

    def home(context, key, tensor):
        found = _materialised_home(context, key, tensor)
        return WrittenDuringRead(found.key, found.get, found.where) if found is not None else None

    failing_placement(Placement("written during a read", home))
    with pytest.raises(SwapVerificationError, match=r"changed while make_safe was copying it"):
        make_safe(encoder, source_file)
    assert fills["n"] == last and same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)


def test_a_weight_that_cannot_be_written_back_does_not_stop_the_restore_of_the_others(safe_file, failing_placement):
    encoder = tiny_text_encoder(seed=0)  # not from a file: every original is restored from the rollback copy
    before = state(encoder)
    calls, failed = {"n": 0}, []

    class FailsTwice(InMemory):  # once halfway through the swap, then on writing one weight back
        def write(self, offset, values):
            calls["n"] += 1
            if calls["n"] == 30:
                raise MemoryError("injected: out of memory halfway through the swap")
            if calls["n"] > 30 and not failed and self.key == "encoder.layers.2.mlp.fc2.weight":  # restored early
                failed.append(self.key)
                raise OSError("injected: no space left on device")
            super().write(offset, values)

    def home(context, key, tensor):
        found = _materialised_home(context, key, tensor)
        return FailsTwice(found.key, found.get, found.where) if found is not None else None

    failing_placement(Placement("fails twice", home))
    with pytest.raises(SwapVerificationError, match=r"1 tensor\(s\) could not be restored: .*no space left") as caught:
        make_safe(encoder, safe_file, torch_dtype=torch.bfloat16)  # cast: written by slices, not read whole
    assert isinstance(caught.value.__context__, MemoryError)
    after = state(encoder)
    differ = [key for key in before if not torch.equal(after[key].view(torch.uint8), before[key].view(torch.uint8))]
    assert differ == failed and not is_safe(encoder)


def test_a_model_file_deleted_during_make_safe_is_reported_not_mixed_in(
    copy_path, saved, tmp_path, safe_file, failing_placement
):
    # Deleting it changes its identity (ctime) as a write would: its bytes can no longer be vouched for.
    folder = tmp_path / "saved"
    shutil.copytree(saved, folder)
    encoder = from_file(folder)
    delete = lambda: os.unlink(folder / "model.safetensors")  # noqa: E731
    failing_placement(failing_after(writes=30, before_failing=delete))
    with pytest.raises(SwapVerificationError, match=r"could not be restored: .*changed during make_safe"):
        make_safe(encoder, safe_file)
    assert not is_safe(encoder)


def test_a_bf16_model_loaded_from_its_file_is_restored_from_it_after_a_cast_swap(tmp_path, safe_file,
                                                                                no_rollback_copy,
                                                                                failing_placement):  # fmt: skip
    from transformers import CLIPTextModel

    tiny_text_encoder(seed=0).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    encoder = CLIPTextModel.from_pretrained(tmp_path / "bf16")  # bf16 in the file: memory-mapped as is
    assert encoder.dtype == torch.bfloat16
    before, output = state(encoder), run(encoder)
    failing_placement(failing_after(writes=30))  # the fp32 checkpoint is cast slice by slice
    with pytest.raises(MemoryError, match="injected"):
        make_safe(encoder, safe_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)


def test_a_channels_last_vision_encoder_is_swapped_in_place(tmp_path):
    # `.to(memory_format=torch.channels_last)` leaves the patch convolution's weight strided (not contiguous).
    from transformers import CLIPVisionModel

    from tests.tiny_models import tiny_vision_config

    torch.manual_seed(123)
    safe = export_encoder(CLIPVisionModel(tiny_vision_config()), tmp_path / "vision.safetensors")
    trust_checkpoint(safe)
    torch.manual_seed(0)
    encoder = CLIPVisionModel(tiny_vision_config()).eval().to(memory_format=torch.channels_last)
    assert not encoder.embeddings.patch_embedding.weight.is_contiguous()
    make_safe(encoder, safe)
    assert is_safe(encoder, verify=True)
    assert encoder.embeddings.patch_embedding.weight.is_contiguous(memory_format=torch.channels_last)


def test_off_a_local_filesystem_a_checkpoint_changed_under_an_unchanged_identity_is_caught(saved, tmp_path, safe_file,
                                                                                          monkeypatch):  # fmt: skip
    # On NFS / SMB / FUSE a server or daemon reports the timestamps: the identity may stay the same while the bytes
    # change. There what is copied is hashed and compared with what was checked.
    from safe_encoders.sources import checked, encoder_source

    source_file = shutil.copy(safe_file, tmp_path / "text.safetensors")
    real_identity = encoder_source.file_identity
    monkeypatch.setattr(encoder_source, "file_identity", lambda file: (*real_identity(file)[:3], 0, 0))  # still
    monkeypatch.setattr(checked, "LOCAL_FILESYSTEMS", {})  # as on a network or FUSE mount
    encoder = from_file(saved)
    before, output = state(encoder), run(encoder)
    validate = EncoderSource.validate

    def validate_then_tamper(self, names):
        digests = validate(self, names)
        span = safetensors_spans(source_file)["text_model.final_layer_norm.weight"]
        with open(source_file, "r+b") as handle:  # checked bytes replaced by unchecked ones, same size
            handle.seek(span.start)
            handle.write(torch.full((4,), 7.0).numpy().tobytes())
        return digests

    monkeypatch.setattr(EncoderSource, "validate", validate_then_tamper)
    with pytest.raises(SwapVerificationError, match=r"final_layer_norm\.weight changed while make_safe was copying"):
        make_safe(encoder, source_file)
    assert same(state(encoder), before) and torch.equal(run(encoder), output)
    assert not is_safe(encoder)
