"""Crash-safe file writing: write to a temporary name beside the target, then rename.

A kill at any moment leaves either the previous file or the complete new one, never a partial
file, because ``os.replace`` is atomic within one filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vox2vox.errors import Vox2VoxError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    The temporary name keeps the target's suffixes (``.nii.gz`` stays ``.nii.gz``) so writers
    that choose a format from the file name still work. On any exception the temporary file is
    removed and the target is left as it was.
    """
    target = Path(target)
    folder = ensure_folder(target.parent)
    suffix = "".join(target.suffixes[-2:]) if target.suffixes else ""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=folder)
    except OSError as err:
        raise Vox2VoxError(f"{folder}: cannot write here ({err.strerror})") from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        # mkstemp creates 0600 files; give outputs the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):  # a full disk, a quota, a file-size limit: the user's to fix
            raise _write_error(target, err) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and its parents) for output; a user error if that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Vox2VoxError(
            f"{folder}: cannot create output folder ({err.strerror or err}); choose a writable folder"
        ) from err
    return folder


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        _write(tmp, data, target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def _write(tmp: Path, data: bytes, target: str | os.PathLike[str]) -> None:
    try:
        tmp.write_bytes(data)
    except OSError as err:
        raise _write_error(target, err) from err


_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_error(target: str | os.PathLike[str], err: OSError) -> Vox2VoxError:
    hint = "free some space or write elsewhere" if err.errno in _SPACE_ERRORS else "check the output folder"
    return Vox2VoxError(f"{target}: write failed ({err.strerror or err}); {hint}")


def _fsync(path: Path) -> None:
    """Flush the file's data to disk; a failure here (ENOSPC, EIO) means the data may be lost.

    Filesystems that cannot fsync (EINVAL, ENOTSUP) are accepted as they are.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
