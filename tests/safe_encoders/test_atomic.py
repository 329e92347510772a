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
