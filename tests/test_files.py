"""atomic_write: all or nothing, and the user's umask."""
import os
import stat

import pytest

from deepnotes.files import atomic_write, default_file_mode


def test_writes_then_renames_with_the_umask_mode(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, lambda tmp: open(tmp, "w").write("hello"))
    assert target.read_text() == "hello"
    umask = os.umask(0o027)  # a group-shared setting
    try:
        atomic_write(target, lambda tmp: open(tmp, "w").write("again"))
        assert stat.S_IMODE(target.stat().st_mode) == 0o640 == default_file_mode()
    finally:
        os.umask(umask)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
