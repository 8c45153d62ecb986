"""A dictionary with attribute access."""

from __future__ import annotations


class Bunch(dict):
    """A dict with additional dot syntax.

    Examples
    --------
    >>> b = Bunch(a=1)
    >>> b.a, b['a']
    (1, 1)
    >>> b.c = 3
    >>> sorted(b)
    ['a', 'c']
    """

    __slots__ = ()

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def copy(self) -> Bunch:
        """Return a shallow copy, still a `Bunch`."""
        return Bunch(self)

    def __repr__(self) -> str:
        return f"Bunch({dict.__repr__(self)})"
