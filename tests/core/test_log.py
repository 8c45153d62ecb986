"""Tests of the logging helpers in `phy_core.log`."""

from __future__ import annotations

import io
import logging

import pytest

from phy_core import log


@pytest.fixture(autouse=True)
def _restore_phy_logger():
    """Leave the global `phy` logger as we found it."""
    logger = logging.getLogger("phy")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_logger_is_the_phy_logger():
    assert log.logger is logging.getLogger("phy")


def test_messages_are_joined(caplog):
    caplog.set_level(logging.DEBUG, logger="phy")
    log.debug("a", 1)
    log.info("b", 2.5, None)
    log.warn("c", "100%")  # A `%` must not be taken as a format directive.
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("phy", logging.DEBUG, "a 1"),
        ("phy", logging.INFO, "b 2.5 None"),
        ("phy", logging.WARNING, "c 100%"),
    ]
    # stacklevel: the record points at the caller, not at the wrapper.
    assert {r.funcName for r in caplog.records} == {"test_messages_are_joined"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warn", logging.WARNING),
        ("WARNING", logging.WARNING),
        (logging.ERROR, logging.ERROR),
        (5, 5),
    ],
)
def test_set_level(name, expected):
    log.set_level(name)
    assert logging.getLogger("phy").level == expected


@pytest.mark.parametrize("bad", ["verbose", "", True, -1, None, 1.5])
def test_set_level_bad(bad):
    logging.getLogger("phy").setLevel(logging.INFO)
    with pytest.raises(ValueError, match="logging level"):
        log.set_level(bad)
    assert logging.getLogger("phy").level == logging.INFO


def test_set_level_filters_messages():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log.register(handler)
    log.set_level("warn")
    log.info("hidden")
    log.warn("shown")
    log.set_level("debug")
    log.debug("now shown")
    # Child loggers follow the phy level too.
    logging.getLogger("phy.settings").debug("child")
    assert stream.getvalue().splitlines() == ["shown", "now shown", "child"]


def test_register_unregister():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log.set_level("info")
    log.register(handler)
    log.register(handler)  # Twice: still one output per message.
    log.info("one")
    log.unregister(handler)
    log.info("two")
    log.unregister(handler)  # Not registered any more: no error.
    assert stream.getvalue() == "one\n"


def test_register_wrong_type():
    with pytest.raises(TypeError, match="logging.Handler"):
        log.register(logging.getLogger("phy"))


def test_console_handler_format_and_idempotence():
    stream = io.StringIO()
    log.add_console_handler("info", stream=stream)
    log.add_console_handler("info", stream=stream)
    log.info("hello", "world")
    log.warn("careful")
    log.debug("hidden")
    assert stream.getvalue().splitlines() == [
        "phy: hello world",
        "phy: warning: careful",
    ]
    n_console = [h for h in logging.getLogger("phy").handlers if getattr(h, "_phy_console", 0)]
    assert len(n_console) == 1


def test_console_handler_replaces_stream_and_level():
    first, second = io.StringIO(), io.StringIO()
    log.add_console_handler("info", stream=first)
    handler = log.add_console_handler("debug", stream=second)
    log.debug("dbg")
    assert first.getvalue() == ""
    assert second.getvalue() == "phy: debug: dbg\n"
    log.unregister(handler)
    log.info("gone")
    assert second.getvalue() == "phy: debug: dbg\n"


def test_console_handler_default_stream_is_current_stderr(capsys):
    log.add_console_handler()
    log.info("to stderr")
    assert capsys.readouterr().err == "phy: to stderr\n"
