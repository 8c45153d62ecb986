"""A capped, uniform sample of a matching pass's events, gathered in the parent as chunks arrive.

The workers send each chunk's events for the refinement (`phy_tmatch.residual`):
snippets of a few of every template's matched spikes and of the residual events,
each capped per chunk. Over a long recording, the per-chunk caps add up (at
least one event per template and home channel per chunk), and the parent held
every chunk's events, then their concatenation, until the refinement. Here the
parent keeps at most `max_per_template` events of each template and
`max_per_home` residual events of each home channel, whatever the recording's
length: the memory of the refinement grows with the templates and channels, not
with the duration.

The sample is uniform: every event gets a random key (seeded by its chunk's
index, so the sample does not depend on the order of arrival nor on the
machine), and a group over its cap keeps its events of smallest keys (a
bottom-k sample, which is a uniform sample without replacement). Groups under
their cap keep all their events, in the order of the chunks and, within a
chunk, as the worker sent them: the same events, in the same order, as
concatenating every chunk's events.
"""

from __future__ import annotations

import numpy as np

from phy_core.bunch import Bunch


class EventSample:
    """Events of a matching pass, at most a fixed number per template and per home channel.

    Parameters
    ----------
    max_per_template : int
        Matched spikes kept per template (``labels >= 0``).
    max_per_home : int
        Residual events kept per home channel (``labels == -1``), and so many misfits
        (``labels < -1``).
    seed : int
        Seeds the random keys (with each chunk's index).
    """

    def __init__(self, max_per_template: int, max_per_home: int, seed: int = 0):
        self.max_per_template = int(max_per_template)
        self.max_per_home = int(max_per_home)
        self.seed = int(seed)
        self._pieces: list[Bunch] = []  # each chunk's kept events, with '_key', '_group'
        self._n_held = 0
        self._over = False  # some group holds more than its cap
        self._counts: dict[int, int] = {}  # group -> events held
        self._bound = 0  # sum over groups of min(held, cap): what a compaction keeps
        self.n_seen = 0  # events received

    def _cap(self, group: int) -> int:
        return self.max_per_template if group >= 0 else self.max_per_home

    @staticmethod
    def _groups(events: Bunch) -> np.ndarray:
        # Templates keep their index; the residual events of home h are group -1 - h, the
        # misfits of home h (labels below -1, `phy_tmatch.residual`) group -2**32 - h: each
        # kind has its own cap per home.
        labels = np.asarray(events.labels, dtype=np.int64)
        homes = np.asarray(events.homes, dtype=np.int64)
        return np.where(labels >= 0, labels, np.where(labels == -1, -1 - homes,
                                                      -(2 ** 32) - homes))

    def add(self, events: Bunch, index: int) -> None:
        """Add a chunk's events (arrays of one row per event; `index`: the chunk's)."""
        n = len(events.labels)
        self.n_seen += n
        if n == 0:
            self._pieces.append(Bunch(events, _key=np.zeros(0), _group=np.zeros(0, np.int64)))
            return
        group = self._groups(events)
        key = np.random.default_rng([self.seed, int(index)]).random(n)
        self._pieces.append(Bunch(events, _key=key, _group=group))
        self._n_held += n
        for g, c in zip(*np.unique(group, return_counts=True)):
            g, c = int(g), int(c)
            before = self._counts.get(g, 0)
            cap = self._cap(g)
            self._counts[g] = before + c
            self._bound += min(before + c, cap) - min(before, cap)
            self._over |= before + c > cap
        # Compact when the surplus is as large as what is kept: memory stays within twice
        # the capped sample (plus a chunk), and each event is compared O(1) times on average.
        if self._over and self._n_held > 2 * self._bound:
            self._compact()

    def _compact(self) -> None:
        """Drop, in every group over its cap, the events beyond its `cap` smallest keys."""
        keys = np.concatenate([p._key for p in self._pieces])
        groups = np.concatenate([p._group for p in self._pieces])
        order = np.lexsort((keys, groups))
        sorted_groups = groups[order]
        first = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
        rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
        caps = np.where(sorted_groups >= 0, self.max_per_template, self.max_per_home)
        keep = np.empty(len(order), dtype=bool)
        keep[order] = rank < caps
        start = 0
        for i, piece in enumerate(self._pieces):
            stop = start + len(piece._key)
            mask = keep[start:stop]
            if not mask.all():
                self._pieces[i] = Bunch({name: value[mask] for name, value in piece.items()})
            start = stop
        self._n_held = int(keep.sum())
        self._counts = {g: min(c, self._cap(g)) for g, c in self._counts.items()}
        self._over = False

    @property
    def n_held(self) -> int:
        """Events held now (at most twice the capped sample, plus a chunk's)."""
        return self._n_held

    def result(self, snippet_dtype=None) -> Bunch:
        """The sample: every key of the events, concatenated in the order of the chunks.

        With `snippet_dtype`, the ``snippets`` are converted while copied (e.g.
        float64 for a consumer that would convert them anyway: one array rather
        than two). The chunks' arrays are freed as they are copied: the
        sample's memory is held once. The object is empty afterwards.
        """
        if self._over:
            self._compact()
        pieces, self._pieces = self._pieces, []
        self._n_held, self._counts, self._bound = 0, {}, 0
        names = [name for name in (pieces[0] if pieces else ()) if not name.startswith("_")]
        n = sum(len(p._key) for p in pieces)
        out = Bunch()
        for name in names:
            first = np.asarray(pieces[0][name])
            dtype = snippet_dtype if name == "snippets" and snippet_dtype is not None \
                else first.dtype
            out[name] = np.empty((n,) + first.shape[1:], dtype=dtype)
        start = 0
        while pieces:
            piece = pieces.pop(0)
            stop = start + len(piece._key)
            for name in names:
                out[name][start:stop] = piece[name]
            start = stop
            del piece  # its arrays go now, before the next piece is copied
        return out
