"""Progress reporting: `ProgressReporter`, and a terminal bar that shows it.

A long task owns a `ProgressReporter` and only updates numbers on it; how the
progress is shown (a terminal bar, the GUI status bar, nothing at all in a
test) is decided by whoever connects to the reporter's events. So the
reporter itself prints nothing: its messages are exposed, formatted, through
`progress_message` and `complete_message` for presenters to display.
"""

from __future__ import annotations

import string
import sys
import time
from typing import IO, Any

from .events import EventEmitter

__all__ = ["ProgressReporter", "TerminalProgressBar", "show_progress"]

# Looked up at call time, so that tests can replace the clock.
_monotonic = time.monotonic


class _KeepMissing(dict):
    """Format mapping that leaves unknown `{fields}` as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _format_message(message: str, fields: dict[str, Any]) -> str:
    # A message is display-only: a missing or mistyped field must never crash
    # the computation it reports on, so fall back to the raw template.
    try:
        return message.format_map(_KeepMissing(fields))
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return message


def _field_names(message: str) -> set[str]:
    return {
        field.split(".")[0].split("[")[0]
        for _, field, _, _ in string.Formatter().parse(message)
        if field
    }


class ProgressReporter(EventEmitter):
    """Report the progress of a task.

    Examples
    --------
    >>> pr = ProgressReporter()
    >>> pr.set_progress_message("Progress: {progress:.0f}%...")
    >>> pr.set_complete_message("Completed!")
    >>> pr.value_max = 10
    >>> for i in range(10):
    ...     pr.increment()  # or pr.value += 1
    >>> pr.is_complete(), pr.progress_message, pr.complete_message
    (True, 'Progress: 100%...', 'Completed!')

    Custom keyword arguments passed to `increment()` or `set_complete()` are
    substituted in the messages (they are remembered until `reset()`).
    Besides them, messages can use `{progress}` (percentage, a float in
    `[0, 100]`), `{value}` and `{value_max}`.

    Emits
    -----
    progress(value, value_max)
        Every time the value is set.
    complete()
        Once, when the value reaches `value_max` (again after `reset()`, or
        after `value_max` was raised above it).

    Notes
    -----
    `reset()` keeps the reference's meaning (reset the progress), so it
    shadows `EventEmitter.reset`; use `reset_callbacks()` to remove every
    connected callback.
    """

    def __init__(self) -> None:
        # Set the state first: EventEmitter.__init__ calls self.reset(), which
        # is our override and does not create the callback table.
        self._value = 0
        self._value_max = 0
        self._has_completed = False
        self._kwargs: dict[str, Any] = {}
        self._progress_message = ""
        self._complete_message = ""
        self.line_break = False
        super().__init__()
        EventEmitter.reset(self)

    def reset_callbacks(self) -> None:
        """Remove all connected callbacks (what `EventEmitter.reset` does)."""
        EventEmitter.reset(self)

    # Messages
    # -------------------------------------------------------------------------

    def set_progress_message(self, message: str, line_break: bool = False) -> None:
        """Set the progress message.

        Parameters
        ----------
        message : str
            A format string that must use the `{progress}` field (a format
            spec is allowed, as in `{progress:.1f}`).
        line_break : bool
            If True, displays print each progress message on its own line
            instead of redrawing the same line.

        Raises
        ------
        ValueError
            If the message does not contain `{progress}` or is not a valid
            format string.
        """
        try:
            fields = _field_names(message)
        except ValueError as e:
            raise ValueError(f"Invalid progress message {message!r}: {e}.") from None
        if "progress" not in fields:
            raise ValueError(f"The progress message {message!r} must contain `{{progress}}`.")
        self._progress_message = message
        self.line_break = line_break

    def set_complete_message(self, message: str) -> None:
        """Set the message shown when the task completes."""
        self._complete_message = message

    def _fields(self) -> dict[str, Any]:
        fields = dict(self._kwargs)
        fields.update(progress=100.0 * self.progress, value=self._value, value_max=self._value_max)
        return fields

    @property
    def progress_message(self) -> str:
        """The progress message formatted with the current values."""
        return _format_message(self._progress_message, self._fields())

    @property
    def complete_message(self) -> str:
        """The complete message formatted with the current values."""
        return _format_message(self._complete_message, self._fields())

    # Value
    # -------------------------------------------------------------------------

    def _set_value(self, value: int, **kwargs: Any) -> None:
        if value < self._value_max:
            self._has_completed = False
        self._value = value
        self._kwargs.update(kwargs)
        # kwargs go to the messages, not to the event, so that every
        # `on_progress(value, value_max)` callback works whatever the caller
        # passes to `increment()`.
        self.emit("progress", self._value, self._value_max)
        if not self._has_completed and self._value >= self._value_max:
            # Flag first: complete callbacks see is_complete() == True, and a
            # callback setting the value again cannot emit `complete` twice.
            self._has_completed = True
            self.emit("complete")

    def increment(self, **kwargs: Any) -> None:
        """Equivalent to `self.value += 1`.

        Keyword arguments are substituted in the progress message.
        """
        self._set_value(self._value + 1, **kwargs)

    def reset(self, value_max: int | None = None) -> None:
        """Set the value to 0 and, if given, the maximum value to `value_max`.

        Emits nothing, and forgets the message keyword arguments.
        """
        if value_max is not None:
            self._value_max = value_max
        self._value = 0
        self._has_completed = False
        self._kwargs = {}

    @property
    def value(self) -> int:
        """Current value (integer). Setting it emits `progress`."""
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        self._set_value(value)

    @property
    def value_max(self) -> int:
        """Maximum value (integer). Setting it emits nothing."""
        return self._value_max

    @value_max.setter
    def value_max(self, value_max: int) -> None:
        if value_max > self._value_max:
            self._has_completed = False
        self._value_max = value_max

    def is_complete(self) -> bool:
        """Return whether the task has completed."""
        return self._has_completed

    def set_complete(self, **kwargs: Any) -> None:
        """Set the value to `value_max`, completing the task (nothing more if it is already)."""
        if self._has_completed and self._value >= self._value_max:
            self._kwargs.update(kwargs)
            return
        self._set_value(self._value_max, **kwargs)

    @property
    def progress(self) -> float:
        """The current progress, a float in `[0, 1]`.

        Values beyond `value_max` are clipped to 1. With `value_max == 0` there
        is no fraction to compute: the progress is 1.0 once the task is
        complete and 0.0 before.
        """
        if self._value_max <= 0:
            return 1.0 if self._has_completed else 0.0
        return min(1.0, max(0.0, self._value / self._value_max))


class TerminalProgressBar:
    """Draw a `ProgressReporter` as a bar in a terminal.

    On a TTY, the same line is redrawn as `[#####     ]  45% message`, at
    most every `min_interval_s` seconds (the 100% state is always drawn), and
    the complete message goes on its own line at the end. On other streams
    (log files, CI), a line is printed only when a new 10% step is reached,
    to keep logs short.

    Parameters
    ----------
    reporter : ProgressReporter
        The reporter to follow; the bar connects to its events.
    stream : file-like or None
        Where to draw; `sys.stderr` by default.
    width : int
        Number of characters inside the brackets.
    min_interval_s : float
        Minimal delay between two redraws on a TTY.

    Examples
    --------
    >>> import io
    >>> pr = ProgressReporter()
    >>> pr.set_complete_message("done")
    >>> out = io.StringIO()
    >>> with TerminalProgressBar(pr, stream=out, width=4):
    ...     pr.reset(2)
    ...     pr.increment(); pr.increment()
    >>> print(out.getvalue(), end="")
    [##  ]  50%
    [####] 100%
    done
    """

    def __init__(
        self,
        reporter: ProgressReporter,
        stream: IO[str] | None = None,
        width: int = 30,
        min_interval_s: float = 0.1,
    ) -> None:
        self.reporter = reporter
        self.stream = stream if stream is not None else sys.stderr
        self.width = int(width)
        self.min_interval_s = min_interval_s
        try:
            self.is_tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.is_tty = False
        self._start_over()
        self._closed = False
        reporter.connect(self._on_progress, event="progress")
        reporter.connect(self._on_complete, event="complete")

    def _start_over(self) -> None:
        self._last_draw_time: float | None = None
        self._last_step = -1
        self._last_length = 0
        self._line_open = False  # A `\r` line is on screen, with no newline yet.

    def _line(self) -> str:
        progress = self.reporter.progress
        n_filled = int(progress * self.width)
        bar = "#" * n_filled + " " * (self.width - n_filled)
        # Floor the percentage: "100%" only when it is really done.
        line = f"[{bar}] {int(100 * progress):3d}%"
        message = self.reporter.progress_message
        return f"{line} {message}" if message else line

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _on_progress(self, value: int, value_max: int) -> None:
        progress = self.reporter.progress
        if self.is_tty:
            now = _monotonic()
            due = self._last_draw_time is None or now - self._last_draw_time >= self.min_interval_s
            if not due and progress < 1.0:
                return
            self._last_draw_time = now
            line = self._line()
            if self.reporter.line_break:
                self._write(line + "\n")
            else:
                # Pad with spaces to erase the end of a longer previous line.
                padding = " " * max(0, self._last_length - len(line))
                self._write("\r" + line + padding)
                self._last_length = len(line)
                self._line_open = True
        else:
            step = int(progress * 10)
            if step > self._last_step:
                self._last_step = step
                self._write(self._line() + "\n")

    def _on_complete(self) -> None:
        self._end_line()
        message = self.reporter.complete_message
        if message:
            self._write(message + "\n")
        # The reporter may be reset and reused: the next run starts a new bar.
        self._start_over()

    def _end_line(self) -> None:
        if self._line_open:
            self._write("\n")
            self._line_open = False

    def close(self) -> None:
        """Disconnect from the reporter, ending any half-drawn line."""
        if self._closed:
            return
        self._closed = True
        self.reporter.unconnect(self._on_progress, self._on_complete)
        self._end_line()

    # typing.Self needs Python 3.11, and phy_core may not use typing_extensions.
    def __enter__(self) -> TerminalProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def show_progress(
    reporter: ProgressReporter, stream: IO[str] | None = None, **kwargs: Any
) -> TerminalProgressBar:
    """Show `reporter` as a terminal bar; see `TerminalProgressBar`."""
    return TerminalProgressBar(reporter, stream=stream, **kwargs)
