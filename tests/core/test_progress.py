"""Tests of `ProgressReporter` and `TerminalProgressBar`."""

from __future__ import annotations

import io

import pytest

from phy_core import progress as progress_module
from phy_core.progress import ProgressReporter, TerminalProgressBar, show_progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(pr: ProgressReporter) -> list:
    events: list = []

    @pr.connect
    def on_progress(value, value_max):
        events.append(("progress", value, value_max))

    @pr.connect
    def on_complete():
        events.append(("complete", pr.is_complete()))

    return events


# ProgressReporter
# -----------------------------------------------------------------------------


def test_reporter_events_sequence():
    pr = ProgressReporter()
    events = _record(pr)

    pr.value_max = 10
    pr.value = 0
    pr.value = 5
    assert pr.value == 5
    assert pr.progress == 0.5
    assert not pr.is_complete()
    pr.value = 10
    assert pr.is_complete()
    assert pr.progress == 1.0

    # Raising value_max un-completes; completing again emits `complete` again.
    pr.value_max = 11
    assert not pr.is_complete()
    assert pr.progress < 1.0
    pr.set_complete()
    assert pr.is_complete()
    assert pr.value == 11

    assert events == [
        ("progress", 0, 10),
        ("progress", 5, 10),
        ("progress", 10, 10),
        ("complete", True),
        ("progress", 11, 11),
        ("complete", True),
    ]


def test_reporter_complete_emitted_once():
    pr = ProgressReporter()
    events = _record(pr)
    pr.value_max = 3
    for _ in range(5):
        pr.increment()
    assert pr.value == 5
    assert pr.progress == 1.0  # Clipped.
    assert [e[0] for e in events].count("complete") == 1
    assert [e[0] for e in events].count("progress") == 5


def test_reporter_reset():
    pr = ProgressReporter()
    events = _record(pr)
    pr.value_max = 2
    pr.increment()
    pr.increment()
    assert pr.is_complete()

    pr.reset()
    assert (pr.value, pr.value_max, pr.is_complete(), pr.progress) == (0, 2, False, 0.0)
    pr.reset(4)
    assert pr.value_max == 4
    assert len(events) == 3  # reset emits nothing.
    # Callbacks survive `reset` (which is *not* EventEmitter.reset).
    for _ in range(4):
        pr.increment()
    assert events[-1] == ("complete", True)
    assert [e[0] for e in events].count("complete") == 2

    pr.reset_callbacks()
    pr.reset()
    pr.set_complete()
    assert len(events) == 3 + 5


def test_reporter_value_max_zero():
    pr = ProgressReporter()
    events = _record(pr)
    assert pr.progress == 0.0
    assert not pr.is_complete()
    pr.set_complete()
    assert pr.is_complete()
    assert pr.progress == 1.0
    assert events == [("progress", 0, 0), ("complete", True)]


def test_reporter_decreasing_value_uncompletes():
    pr = ProgressReporter()
    pr.value_max = 2
    pr.value = 2
    assert pr.is_complete()
    pr.value = 1
    assert not pr.is_complete()


def test_reporter_messages():
    pr = ProgressReporter()
    assert pr.progress_message == ""
    assert pr.complete_message == ""
    pr.set_progress_message("Step {value}/{value_max}: {progress:.0f}% ({name})")
    pr.set_complete_message("Done with {name} in {n} steps.")
    pr.value_max = 4
    pr.increment(name="filter")
    assert pr.progress_message == "Step 1/4: 25% (filter)"
    # Keyword arguments are remembered until they change...
    pr.increment()
    assert pr.progress_message == "Step 2/4: 50% (filter)"
    pr.set_complete(name="pca", n=4)
    assert pr.complete_message == "Done with pca in 4 steps."
    # ... and forgotten on reset; an unknown field is left as is, never raising.
    pr.reset()
    assert pr.progress_message == "Step 0/4: 0% ({name})"


def test_reporter_message_is_safe_with_bad_fields():
    pr = ProgressReporter()
    pr.set_progress_message("{progress:.1f}% {count:d}")
    pr.value_max = 2
    pr.increment(count="not an int")  # Must not raise inside the computation.
    assert pr.progress_message == "{progress:.1f}% {count:d}"


def test_reporter_progress_message_requires_progress():
    pr = ProgressReporter()
    with pytest.raises(ValueError, match="progress"):
        pr.set_progress_message("Working...")
    with pytest.raises(ValueError, match="Invalid progress message"):
        pr.set_progress_message("{progress")
    pr.set_progress_message("{progress}%", line_break=True)
    assert pr.line_break


def test_reporter_increment_kwargs_not_passed_to_callbacks():
    pr = ProgressReporter()
    events = _record(pr)  # Callbacks accept only (value, value_max).
    pr.value_max = 1
    pr.increment(name="x")
    assert events == [("progress", 1, 1), ("complete", True)]


# TerminalProgressBar
# -----------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """A controllable replacement of the bar's clock."""
    now = [0.0]
    monkeypatch.setattr(progress_module, "_monotonic", lambda: now[0])
    return now


def test_bar_tty(clock):
    pr = ProgressReporter()
    pr.set_progress_message("{progress:.0f}% done")
    pr.set_complete_message("Finished!")
    out = FakeTTY()
    with TerminalProgressBar(pr, stream=out, width=10) as bar:
        assert bar.is_tty
        pr.value_max = 20
        for i in range(20):
            clock[0] = i * 0.2  # Slow enough: every update is drawn.
            pr.increment()
    text = out.getvalue()
    assert text.count("\r") == 20
    assert "\r[#         ]  10% 10% done" in text
    assert text.endswith("\r[##########] 100% 100% done\nFinished!\n")


def test_bar_tty_rate_limited(clock):
    pr = ProgressReporter()
    out = FakeTTY()
    bar = TerminalProgressBar(pr, stream=out, width=10)
    pr.value_max = 1000
    for i in range(1000):
        clock[0] = i * 0.001  # 1000 updates within one second.
        pr.increment()
    bar.close()
    draws = out.getvalue().count("\r")
    assert 2 <= draws <= 12  # ~10 per second, plus the final 100%.
    assert out.getvalue().endswith("[##########] 100%\n")


def test_bar_tty_pads_shorter_lines(clock):
    pr = ProgressReporter()
    pr.set_progress_message("{progress:.0f}% {name}")
    out = FakeTTY()
    TerminalProgressBar(pr, stream=out, width=4, min_interval_s=0)
    pr.value_max = 2
    pr.increment(name="a long name")
    pr.increment(name="x")
    last = out.getvalue().split("\r")[-1]
    first = out.getvalue().split("\r")[-2]
    assert last.rstrip("\n").rstrip() == "[####] 100% 100% x"
    assert len(last.rstrip("\n")) >= len(first)


def test_bar_tty_line_break(clock):
    pr = ProgressReporter()
    pr.set_progress_message("at {progress:.0f}%", line_break=True)
    out = FakeTTY()
    with show_progress(pr, stream=out, width=2, min_interval_s=0):
        pr.value_max = 2
        pr.increment()
        pr.increment()
    assert out.getvalue() == "[# ]  50% at 50%\n[##] 100% at 100%\n"


def test_bar_non_tty_every_10_percent():
    pr = ProgressReporter()
    pr.set_complete_message("Complete.")
    out = io.StringIO()
    with TerminalProgressBar(pr, stream=out, width=10) as bar:
        assert not bar.is_tty
        pr.value_max = 1000
        for _ in range(1000):
            pr.increment()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # 0% (the task started), 10%, ..., 100%, then the complete message.
    assert len(lines) == 12
    assert lines[0] == "[          ]   0%"
    assert lines[1] == "[#         ]  10%"
    assert lines[-2] == "[##########] 100%"
    assert lines[-1] == "Complete."


def test_bar_close_disconnects(clock):
    pr = ProgressReporter()
    out = FakeTTY()
    bar = TerminalProgressBar(pr, stream=out, width=4)
    pr.value_max = 4
    pr.increment()
    bar.close()
    # The half-drawn line is terminated so later output starts on a new line.
    assert out.getvalue() == "\r[#   ]  25%\n"
    bar.close()  # Idempotent.
    pr.increment()
    pr.set_complete()
    assert out.getvalue() == "\r[#   ]  25%\n"
    assert pr._callbacks["progress"] == []


def test_bar_reused_after_reset():
    pr = ProgressReporter()
    out = io.StringIO()
    TerminalProgressBar(pr, stream=out, width=2)
    for _ in range(2):
        pr.reset(2)
        pr.increment()
        pr.increment()
    assert out.getvalue().splitlines() == ["[# ]  50%", "[##] 100%"] * 2


def test_bar_default_stream_is_stderr(capsys):
    pr = ProgressReporter()
    with TerminalProgressBar(pr, width=2):
        pr.reset(1)
        pr.increment()
    assert capsys.readouterr().err == "[##] 100%\n"


def test_set_complete_twice_emits_nothing_more():
    pr = ProgressReporter()
    pr.value_max = 2
    events = []
    pr.connect(lambda v, m: events.append(("progress", v)), event="progress")
    pr.connect(lambda: events.append(("complete",)), event="complete")
    pr.increment()
    pr.increment()
    pr.set_complete()
    assert events == [("progress", 1), ("progress", 2), ("complete",)]
