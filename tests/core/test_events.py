"""Tests of `EventEmitter` and `Bunch`."""

import pytest

from phy_core import Bunch, EventEmitter


def test_emit_returns_results_in_registration_order():
    emitter = EventEmitter()
    calls = []

    @emitter.connect
    def on_spam(x, key=None):
        calls.append(("first", x, key))
        return 1

    emitter.connect(lambda x, key=None: calls.append(("second", x, key)) or 2, event="spam")
    assert emitter.emit("spam", 10, key="k") == [1, 2]
    assert calls == [("first", 10, "k"), ("second", 10, "k")]
    assert emitter.emit("eggs") == []


def test_connect_as_decorator_with_event_and_bad_names():
    emitter = EventEmitter()

    @emitter.connect(event="select")
    def whatever(ids):
        return ids

    assert emitter.emit("select", [1]) == [[1]]
    with pytest.raises(ValueError, match="on_<event>"):
        emitter.connect(lambda: None)
    with pytest.raises(TypeError):
        emitter.connect(42, event="x")


def test_unconnect_and_reset():
    emitter = EventEmitter()

    def on_a():
        return "a"

    def on_b():
        return "b"

    emitter.connect(on_a)
    emitter.connect(on_b)
    emitter.connect(on_b, event="a")
    emitter.unconnect(on_b)
    assert emitter.emit("a") == ["a"]
    assert emitter.emit("b") == []
    emitter.reset()
    assert emitter.emit("a") == []


def test_events_are_per_object():
    first, second = EventEmitter(), EventEmitter()
    first.connect(lambda: 1, event="x")
    assert second.emit("x") == []


def test_set_method_creates_emitting_method():
    emitter = EventEmitter()
    emitter.connect(lambda v: v * 2, event="double", set_method=True)
    assert emitter.double(21) == [42]


def test_callback_may_unconnect_itself_while_emitting():
    emitter = EventEmitter()

    def on_once():
        emitter.unconnect(on_once)
        return "once"

    emitter.connect(on_once)
    assert emitter.emit("once") == ["once"]
    assert emitter.emit("once") == []


def test_bunch():
    b = Bunch(a=1)
    b.b = 2
    assert b == {"a": 1, "b": 2} and b.a == 1
    copy = b.copy()
    assert isinstance(copy, Bunch) and copy is not b
    del b.a
    assert "a" not in b
    with pytest.raises(AttributeError):
        b.missing
