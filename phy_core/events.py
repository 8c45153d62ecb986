"""Per-object events: `EventEmitter`.

There is no global event bus in phy: every object that has something to
announce (a `Clustering`, a `Wizard`, a `ProgressReporter`, a view) derives
from `EventEmitter` and others connect to *that* object.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any


def _event_name_from_callback(func: Callable) -> str:
    name = getattr(func, "__name__", "")
    if not name.startswith("on_") or len(name) <= 3:
        raise ValueError(
            f"Cannot infer the event name from callback {name!r}: name it "
            "`on_<event>` or pass `event=...` explicitly."
        )
    return name[3:]


class EventEmitter:
    """Emit events and call the callbacks registered for them.

    Derive from this class to let other objects know of what happens.

    Examples
    --------
    >>> class MyClass(EventEmitter):
    ...     def f(self):
    ...         return self.emit('my_event', 1, key=2)
    >>> o = MyClass()
    >>> @o.connect
    ... def on_my_event(arg, key=None):
    ...     return arg + key
    >>> o.f()
    [3]
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Remove all registered callbacks."""
        self._callbacks: dict[str, list[Callable]] = defaultdict(list)

    def connect(
        self,
        func: Callable | None = None,
        event: str | None = None,
        set_method: bool = False,
    ):
        """Register a callback function for an event.

        Parameters
        ----------
        func : callable or None
            The callback. When omitted, `connect` returns a decorator.
        event : str or None
            The event name. By default it is taken from the callback's name,
            which must then be `on_<event>`.
        set_method : bool
            If True, also create a method `<event>(*args, **kwargs)` on this
            object that emits the event.

        Returns
        -------
        func : callable
            The callback itself, so `connect` can be used as a decorator.

        Notes
        -----
        Several callbacks can be registered for one event; they are called
        in registration order, and that order may matter in applications.
        """
        if func is None:
            return partial(self.connect, event=event, set_method=set_method)
        if not callable(func):
            raise TypeError(f"The callback must be callable, got {func!r}.")
        event = event or _event_name_from_callback(func)
        self._callbacks[event].append(func)
        if set_method:
            setattr(self, event, partial(self.emit, event))
        return func

    def unconnect(self, *funcs: Callable) -> None:
        """Unconnect the given callback functions from every event."""
        for callbacks in self._callbacks.values():
            callbacks[:] = [c for c in callbacks if all(c != f for f in funcs)]

    def emit(self, event: str, *args: Any, **kwargs: Any) -> list:
        """Call every callback registered for `event`.

        Positional and keyword arguments are forwarded to the callbacks.

        Returns
        -------
        results : list
            The callbacks' return values, in registration order.
        """
        # Copy: a callback may connect or unconnect callbacks while we iterate.
        return [callback(*args, **kwargs) for callback in list(self._callbacks.get(event, ()))]
