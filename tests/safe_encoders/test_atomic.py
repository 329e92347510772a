import pytest

from safe_encoders.atomic import atomic_write, atomic_write_text


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "sub" / "report.json", "old")

    def half_then_crash(tmp):
        tmp.write_text("half of the new content")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"


# ------------------------------------------------------------------ file modes


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_folders_respect_the_umask(tmp_path, mask, file_mode, dir_mode):
    from safe_encoders.atomic import atomic_folder
    from tests.faults import umask

    with umask(mask):
        target = atomic_write_text(tmp_path / "report.md", "x")
        with atomic_folder(tmp_path / "export") as tmp:
            atomic_write_text(tmp / "a.json", "{}")
    assert target.stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "export").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "export" / "a.json").stat().st_mode & 0o777 == file_mode


# ------------------------------------------------------------------ folders written whole


def test_a_folder_failing_halfway_leaves_no_partial_folder_and_keeps_the_old_one(tmp_path):
    from safe_encoders.atomic import FolderWriteError, atomic_folder
    from tests.faults import file_size_limit, tree

    def fill(folder, size):
        atomic_write_text(folder / "small.txt", "s")
        atomic_write_text(folder / "big.txt", "b" * size)

    with (
        pytest.raises(FolderWriteError, match=r"could not write .*new.*nothing was written"),
        file_size_limit(1000),
        atomic_folder(tmp_path / "new") as tmp,
    ):
        fill(tmp, 5000)
    assert tree(tmp_path) == {}  # no folder, no temporary sibling

    with atomic_folder(tmp_path / "old") as tmp:
        fill(tmp, 10)
    before = tree(tmp_path)
    with pytest.raises(FolderWriteError), file_size_limit(1000), atomic_folder(tmp_path / "old") as tmp:
        fill(tmp, 5000)
    assert tree(tmp_path) == before  # the previous folder untouched, nothing beside it

    with atomic_folder(tmp_path / "old") as tmp:  # a successful rewrite replaces it whole
        atomic_write_text(tmp / "small.txt", "new")
        atomic_write_text(tmp / "big.txt", "")
    assert tree(tmp_path) == {"old/small.txt": b"new", "old/big.txt": b""}


def test_a_folder_holding_other_files_is_refused_not_deleted(tmp_path):
    from safe_encoders.atomic import FolderWriteError, atomic_folder

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with (
        pytest.raises(FolderWriteError, match=r"already holds other files \(notes\.txt\)"),
        atomic_folder(tmp_path / "out") as tmp,
    ):
        atomic_write_text(tmp / "text_encoder.safetensors", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from safe_encoders.atomic import atomic_folder

    (tmp_path / ".out.abc123.partial").mkdir()  # what a kill -9 during a write leaves
    (tmp_path / ".out.abc123.partial" / "text_encoder.safetensors").write_text("half")
    with atomic_folder(tmp_path / "out") as tmp:
        atomic_write_text(tmp / "a", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _encoder_sizes(files):
    return sorted(p.stat().st_size for p in files.values())


def test_convert_checkpoint_failing_on_the_second_encoder_leaves_nothing(tmp_path):
    from safe_encoders import convert_checkpoint
    from safe_encoders.atomic import FolderWriteError
    from tests.faults import file_size_limit, tree, umask
    from tests.tiny_models import save_clip_repo, tiny_clip_model

    folder = save_clip_repo(tiny_clip_model(1), tmp_path / "clip")
    with umask(0o022):
        files = convert_checkpoint(folder, tmp_path / "full")
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in files.values())
    small, large = _encoder_sizes(files)
    with (
        pytest.raises(FolderWriteError, match="nothing was written"),
        file_size_limit((small + large) // 2),
    ):  # the first encoder fits, the second does not
        convert_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "full"]
    assert tree(tmp_path / "full").keys() == {"text_encoder.safetensors", "vision_encoder.safetensors"}


def test_hysac_save_pretrained_failing_halfway_leaves_nothing(tmp_path):
    from safe_encoders.atomic import FolderWriteError
    from tests.faults import file_size_limit
    from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac

    model = tiny_hysac()
    folder = model.save_pretrained(tmp_path / "full")
    sizes = sorted(p.stat().st_size for p in folder.glob("*_encoder.safetensors"))
    with pytest.raises(FolderWriteError), file_size_limit(sum(sizes) // 2):
        model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
