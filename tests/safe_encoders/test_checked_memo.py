"""A checkpoint file checked once is not read again to be checked while its identity is unchanged; a change is a miss.

`sources.checked`: the digests of a file that passed `EncoderSource.validate`, kept in the trust folder
under the file's (device, inode, size, mtime, ctime).
"""

from __future__ import annotations

import pytest
import torch

from safe_encoders import CorruptCheckpointError, export_encoder, is_safe, make_safe, trust_checkpoint
from safe_encoders.sources import checked, encoder_source
from safe_encoders.streaming import safetensors_spans
from tests.tiny_models import tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def safe_file(tmp_path):
    return export_encoder(tiny_text_encoder(seed=123), tmp_path / "text.safetensors")


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test count as settled at once (else a file changed < 2 s ago is not remembered)."""
    monkeypatch.setattr(checked, "SETTLE_NS", 0)


@pytest.fixture
def reads(monkeypatch):
    """How many tensors `validate` reads and checks."""
    count = {"n": 0}
    check_weight = encoder_source.check_weight

    def counted(*args, **kwargs):
        count["n"] += 1
        return check_weight(*args, **kwargs)

    monkeypatch.setattr(encoder_source, "check_weight", counted)
    return count


def state(encoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def test_a_file_checked_once_is_not_read_again_to_be_checked(safe_file, settled, reads):
    make_safe(tiny_text_encoder(seed=0), safe_file)
    first = reads["n"]
    assert first > 0
    encoder = make_safe(tiny_text_encoder(seed=1), safe_file)
    assert reads["n"] == first and is_safe(encoder, verify=False)
    assert torch.equal(encoder.final_layer_norm.weight, tiny_text_encoder(seed=123).final_layer_norm.weight)


def test_a_file_changed_after_its_check_is_checked_again(safe_file, settled, reads):
    make_safe(tiny_text_encoder(seed=0), safe_file)
    span = safetensors_spans(safe_file)["text_model.final_layer_norm.weight"]
    with open(safe_file, "r+b") as handle:  # same size, new bytes: a NaN where a weight was
        handle.seek(span.start)
        handle.write(torch.tensor([float("nan")]).numpy().tobytes())
    encoder = tiny_text_encoder(seed=1)
    before = state(encoder)
    with pytest.raises(CorruptCheckpointError, match=r"final_layer_norm\.weight"):
        make_safe(encoder, safe_file)
    assert all(torch.equal(before[k], v) for k, v in state(encoder).items()) and not is_safe(encoder)


def test_a_file_written_just_before_its_check_is_not_remembered(safe_file, reads):
    make_safe(tiny_text_encoder(seed=0), safe_file)  # the file is seconds old: its timestamps may not show a rewrite
    first = reads["n"]
    make_safe(tiny_text_encoder(seed=1), safe_file)
    assert reads["n"] == 2 * first


def test_a_damaged_memo_is_a_miss(safe_file, settled, reads):
    make_safe(tiny_text_encoder(seed=0), safe_file)
    first = reads["n"]
    checked._memo_path(safe_file).write_text('{"format": 1, "path": 3')
    make_safe(tiny_text_encoder(seed=1), safe_file)
    assert reads["n"] == 2 * first


def test_a_file_trusted_by_the_user_is_not_read_again_to_be_checked(safe_file, settled, reads):
    trust_checkpoint(safe_file)  # reads and checks every tensor (floating point, finite, the file's digests)
    encoder = make_safe(tiny_text_encoder(seed=0), safe_file)
    assert reads["n"] == 0 and is_safe(encoder, verify=True)


def nan_copy(path, target):
    """A copy of `path` at `target`, of the same size, with a NaN where a checked weight was."""
    import shutil

    shutil.copyfile(path, target)
    span = safetensors_spans(target)["text_model.final_layer_norm.weight"]
    with open(target, "r+b") as handle:
        handle.seek(span.start)
        handle.write(torch.tensor([float("nan")]).numpy().tobytes())
    return target


def test_a_file_replaced_by_another_of_the_same_size_at_once_is_checked_again(safe_file, tmp_path, settled):
    import os

    make_safe(tiny_text_encoder(seed=0), safe_file)
    os.replace(nan_copy(safe_file, tmp_path / "other.safetensors"), safe_file)  # same size, same second
    with pytest.raises(CorruptCheckpointError, match=r"final_layer_norm\.weight"):
        make_safe(tiny_text_encoder(seed=1), safe_file)


def test_a_write_through_a_hard_link_is_seen_under_every_name(safe_file, tmp_path, settled):
    import os

    link = tmp_path / "link.safetensors"
    os.link(safe_file, link)
    make_safe(tiny_text_encoder(seed=0), safe_file)
    make_safe(tiny_text_encoder(seed=0), link)  # both names remembered
    span = safetensors_spans(link)["text_model.final_layer_norm.weight"]
    with open(link, "r+b") as handle:
        handle.seek(span.start)
        handle.write(torch.tensor([float("nan")]).numpy().tobytes())
    for name in (safe_file, link):
        with pytest.raises(CorruptCheckpointError, match=r"final_layer_norm\.weight"):
            make_safe(tiny_text_encoder(seed=1), name)


def test_a_relative_path_shares_the_memo_of_its_absolute_one(safe_file, settled, reads, monkeypatch):
    make_safe(tiny_text_encoder(seed=0), safe_file)
    first = reads["n"]
    monkeypatch.chdir(safe_file.parent)
    make_safe(tiny_text_encoder(seed=1), safe_file.name)
    assert reads["n"] == first


def test_a_trusted_file_changed_after_it_was_trusted_is_checked_again(safe_file, tmp_path, settled):
    import os

    trust_checkpoint(safe_file)
    os.replace(nan_copy(safe_file, tmp_path / "other.safetensors"), safe_file)
    encoder = tiny_text_encoder(seed=1)
    before = state(encoder)
    with pytest.raises(CorruptCheckpointError, match=r"final_layer_norm\.weight"):
        make_safe(encoder, safe_file)
    assert all(torch.equal(before[k], v) for k, v in state(encoder).items()) and not is_safe(encoder)


def test_a_folder_swapped_while_a_file_is_trusted_trusts_and_remembers_nothing(tmp_path, settled, reads, monkeypatch):
    # The file's own identity stays the same when a folder on its path is renamed away and back.
    from safe_encoders import SwapVerificationError
    from safe_encoders.sources.encoder_source import EncoderSource

    folder, parked, other = tmp_path / "ckpt", tmp_path / "parked", tmp_path / "other"
    # transformers folders: no digests recorded in the file, so only reading the very file checked can tell.
    tiny_text_encoder(seed=123).save_pretrained(folder)
    tiny_text_encoder(seed=7).save_pretrained(other)  # valid, same size, other weights
    checkpoint = folder
    identities, remember = EncoderSource.file_identities, EncoderSource.remember_checked

    def identities_then_swap(self):
        taken = identities(self)
        folder.rename(parked)
        other.rename(folder)
        return taken

    def swap_back_then_remember(self, *args):
        folder.rename(other)
        parked.rename(folder)
        return remember(self, *args)

    monkeypatch.setattr(EncoderSource, "file_identities", identities_then_swap)
    monkeypatch.setattr(EncoderSource, "remember_checked", swap_back_then_remember)
    with pytest.raises(SwapVerificationError, match="changed while it was being read"):
        trust_checkpoint(checkpoint)
    monkeypatch.setattr(EncoderSource, "file_identities", identities)
    monkeypatch.setattr(EncoderSource, "remember_checked", remember)
    if parked.exists():  # the read failed before the swap back
        folder.rename(other)
        parked.rename(folder)
    encoder = make_safe(tiny_text_encoder(seed=0), checkpoint)
    assert reads["n"] > 0 and not is_safe(encoder, verify=True)  # nothing was remembered, nothing trusted


def test_a_file_on_a_filesystem_not_known_to_be_local_is_never_remembered(safe_file, settled, reads, monkeypatch):
    # On NFS, SMB or FUSE (sshfs...) the timestamps are reported by a server or a daemon: an identity proves nothing.
    assert checked.local_filesystem(safe_file)  # the tests' temporary folder is on a local filesystem
    make_safe(tiny_text_encoder(seed=0), safe_file)  # remembered
    first = reads["n"]
    monkeypatch.setattr(checked, "LOCAL_FILESYSTEMS", {})  # as if it were a network or FUSE mount
    make_safe(tiny_text_encoder(seed=1), safe_file)
    assert reads["n"] == 2 * first
    assert not checked.local_filesystem(safe_file)
