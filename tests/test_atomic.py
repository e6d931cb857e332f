"""Atomic writes: permissions of the renamed file."""

from __future__ import annotations


def test_written_files_follow_the_umask_not_mkstemp(tmp_path):
    import os

    from vox2vox.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
