"""Atomic file writes: a file is always either its old or its new content.

Write a temporary file in the same directory (same filesystem, so the
rename is atomic), flush and fsync it, rename it over the target, then
fsync the directory so the rename itself survives a crash.

A writer of several files in one directory may pass ``sync_directory=False``
to each file and call `fsync_directory` once after the last rename (each
directory fsync costs a disk flush): every file is still fsynced before its
rename, and the renames are durable when that call returns.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (before renaming it into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (after a rename), best effort."""
    # POSIX only; best effort (some filesystems refuse to open directories).
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb",
                  sync_directory: bool = True) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the block ends without error.

    On an exception the temporary file is removed and `path` is untouched.
    With ``sync_directory=False`` the rename is not yet durable: the caller
    must call `fsync_directory` on ``path``'s directory before relying on it.

    Examples
    --------
    >>> with atomic_writer(tmp / "spike_clusters.npy") as f:   # doctest: +SKIP
    ...     np.save(f, spike_clusters)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {"encoding": "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            # mkstemp creates 0600 files; keep the permissions the user chose.
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str,
                 sync_directory: bool = True) -> None:
    """Write `data` (text is UTF-8) to `path` atomically (see `atomic_writer`)."""
    with atomic_writer(path, "w" if isinstance(data, str) else "wb",
                       sync_directory=sync_directory) as f:
        f.write(data)
