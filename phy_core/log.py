"""Logging helpers on the standard `logging` module, under the `phy` logger.

Every phy module logs through a logger in the `phy` hierarchy (`phy` itself or
a child such as `phy.settings`), so one call to `set_level` or one handler
registered here controls all of phy's output, and applications embedding phy
keep full control through the ordinary `logging` API.

The reference implementation kept its own list of logger objects
(`register(logger)` / `unregister(logger)`). Here the standard library already
provides that machinery, so `register` / `unregister` take a
`logging.Handler` (a console, a file, the GUI status bar...) and attach it to
the `phy` logger.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

__all__ = [
    "add_console_handler",
    "debug",
    "info",
    "logger",
    "register",
    "set_level",
    "unregister",
    "warn",
]

logger = logging.getLogger("phy")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
}


def _join(msg: tuple[Any, ...]) -> str:
    return " ".join(str(m) for m in msg)


# stacklevel=2 so that `%(funcName)s` / `%(lineno)d` point at our caller, not at
# these one-line wrappers. The joined message is passed without arguments, so a
# `%` inside it is never interpreted as a format directive.


def debug(*msg: Any) -> None:
    """Log a debug message; the arguments are joined with spaces."""
    logger.debug(_join(msg), stacklevel=2)


def info(*msg: Any) -> None:
    """Log an info message; the arguments are joined with spaces."""
    logger.info(_join(msg), stacklevel=2)


def warn(*msg: Any) -> None:
    """Log a warning; the arguments are joined with spaces."""
    logger.warning(_join(msg), stacklevel=2)


def _parse_level(level: str | int) -> int:
    # bool is an int subclass; `set_level(True)` is a bug, not DEBUG+1.
    if isinstance(level, int) and not isinstance(level, bool):
        if level < 0:
            raise ValueError(f"A logging level must be >= 0, got {level}.")
        return level
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    raise ValueError(
        f"Unknown logging level {level!r}: expected one of "
        f"{', '.join(repr(k) for k in _LEVELS)} or a `logging` integer level."
    )


def set_level(level: str | int) -> None:
    """Set the level of the `phy` logger (and so of every `phy.*` logger).

    Parameters
    ----------
    level : str or int
        `'debug'`, `'info'`, `'warn'` or `'warning'` (case-insensitive), or
        an integer level such as `logging.DEBUG`.

    Raises
    ------
    ValueError
        If the level is not one of the above.
    """
    logger.setLevel(_parse_level(level))


def register(handler: logging.Handler) -> None:
    """Attach a `logging.Handler` to the `phy` logger.

    This replaces the reference's `register(logger)`: instead of phy keeping
    its own list of logger objects, outputs are standard handlers. Registering
    the same handler twice has no further effect.

    Raises
    ------
    TypeError
        If `handler` is not a `logging.Handler`.
    """
    if not isinstance(handler, logging.Handler):
        raise TypeError(f"Expected a logging.Handler, got {type(handler).__name__}.")
    logger.addHandler(handler)


def unregister(handler: logging.Handler) -> None:
    """Detach a handler from the `phy` logger (no-op if it is not attached)."""
    logger.removeHandler(handler)


class _ConsoleFormatter(logging.Formatter):
    """`phy: message` for info, `phy: <level>: message` otherwise."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # super().format also appends the traceback when exc_info is set.
        message = super().format(record)
        if record.levelno == logging.INFO:
            return f"phy: {message}"
        return f"phy: {record.levelname.lower()}: {message}"


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever `sys.stderr` is *now*.

    Binding `sys.stderr` at creation would keep writing to a stale stream once
    something (pytest's capture, a GUI redirect) has replaced it.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # The stream is always the current sys.stderr.


def add_console_handler(
    level: str | int = "info", stream: IO[str] | None = None
) -> logging.Handler:
    """Show phy's log messages in the terminal, concisely (used by the CLI).

    Idempotent: there is at most one console handler; a second call replaces
    the first (with the new stream) instead of duplicating every message.

    Parameters
    ----------
    level : str or int
        Passed to `set_level`; the handler itself has no level of its own, so
        a later `set_level` call changes what the console shows.
    stream : file-like or None
        Where to write. `None` means the current `sys.stderr`, looked up at
        each message.

    Returns
    -------
    handler : logging.Handler
        The installed handler, e.g. to `unregister` it later.
    """
    set_level(level)
    # Find a previous console handler by a marker attribute rather than a
    # module global, so that it is found even after a module reload.
    for existing in list(logger.handlers):
        if getattr(existing, "_phy_console", False):
            logger.removeHandler(existing)
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(_ConsoleFormatter())
    handler._phy_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return handler
