"""Read a small text file (parameters, probes, tables) with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PhyError


def read_text(path: str | os.PathLike, error: type[Exception] = PhyError) -> str:
    """The UTF-8 text of `path`.

    Raises
    ------
    error
        (the reader's own error class) if the file is missing, unreadable,
        or not UTF-8 text; the message starts with the path.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file.") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text file ({exc.reason}).") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror}).") from None
