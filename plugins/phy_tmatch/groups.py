"""What the refinement works on: its groups (`Group`) and the events they are made of.

A *group* (`phy_tmatch.refine`) is a candidate unit: a template kept whole, a part
of a split, a group of residual events or of misfits. Groups are merged, dropped,
and the rest become the next pass's templates. `EventSnippets` gives a group's
events (their snippets, on the local channels of a home channel) whitened, or
their mean on all the channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .snippet_whitener import SnippetWhitener


@dataclass(eq=False)
class Group:
    """A candidate unit of the refinement (compared by identity: its fields are arrays).

    Attributes
    ----------
    mean : (n_t, C) array
        Its waveform: a template kept whole keeps its own, a new, split or merged
        group has the mean of its snippets (or of the merged groups' means).
    n_spikes : int
        The spikes it stands for: all those a template kept whole matched in the
        pass, the events of the others (merges add them up).
    cluster_id : int or None
        A template kept whole keeps its cluster id; None for a new, split or
        merged group (it gets a new id).
    home : int
        Its peak channel (the merge radius and the duplicate test are measured
        from it).
    samples : (n,) array
        Its spikes' samples (the refractory and duplicate tests).
    parent : int
        The template it is a part of (a split, by shape or by amplitude), or -1.
    n_averaged : int
        The spikes its mean averaged (the weights of a merge of means; `counted`).
    spread : float
        The variance of its whitened snippets around their mean, in noise units
        (`phy_tmatch.comparison.spread`).
    rows : (m,) int array
        Its events' rows among the pass's events (its snippets).
    snippet_home : int
        The channel on whose local channels its snippets are.
    residual : bool
        Whether it is made of residual events (chosen by their troughs, so their
        mean is biased).
    scale : float
        The factor its waveform gets if it is kept as it is
        (`phy_tmatch.amplitude.mean_amplitude`).
    snippet_mean : bool
        Whether its mean is its snippets' mean, on its snippet home's local
        channels only (widened by `phy_tmatch.means.WindowMeans`).
    amplitude_copy : bool
        Whether it is a scaled copy of an amplitude split (the pursuit gives it
        the amplitude prior: `phy_tmatch.runner`).
    origin : str
        Where it comes from, for the debug log (`label`): ``c71`` a template kept
        whole (its cluster id: the masked EM cluster or the refinement's template
        it was made from), ``c71.s0`` a part of its split by shape, ``c71.a1`` a
        copy of its split by amplitude, ``r958.0``/``m958.0`` a part of the
        residual events/misfits of home channel 958, ``A+B`` a merge.
    """

    mean: np.ndarray
    n_spikes: int
    cluster_id: int | None
    home: int
    samples: np.ndarray
    parent: int
    n_averaged: int
    spread: float
    rows: np.ndarray
    snippet_home: int
    residual: bool
    scale: float = 1.0
    snippet_mean: bool = False
    amplitude_copy: bool = False
    origin: str = "?"

    def label(self) -> str:
        """Its origin and the spikes it stands for, for the debug log: ``c71 (n=457)``."""
        return f"{self.origin} (n={self.n_spikes})"

    def counted(self, copies: set[int]) -> int:
        """The spike count its template is built with (`build_templates`' channel test).

        Its matched spikes; for a kept template of `copies` (one of two of one
        shape whose amplitudes form two modes), at least the spikes its mean
        averaged: the test is about the noise of the mean, and the copies of an
        amplitude split are as clean as their parent's mean (counted so when
        split, `refine`). On fewer channels the next pass, the smaller copy
        explained less of its own spikes than the larger one, and matched none.
        (Applied to every kept template, this lost a unit of the 1024 channels.)
        """
        if self.cluster_id is not None and self.cluster_id in copies:
            return max(int(self.n_spikes), int(self.n_averaged))
        return int(self.n_spikes)


class EventSnippets:
    """A matching pass's event snippets ``(n, n_t, L)``, whitened or averaged.

    Each event's snippet is on the `L` local channels of its home channel
    (``local[home]``).
    """

    def __init__(self, snippets: np.ndarray, whitener: SnippetWhitener, local: np.ndarray,
                 n_t: int, n_channels: int):
        self.snippets, self.whitener, self.local = snippets, whitener, local
        self.n_t, self.n_channels = n_t, n_channels

    def whitened(self, rows: np.ndarray, home) -> np.ndarray:
        """The snippets of `rows` (on `home`'s local channels), whitened and flat."""
        return self.whitener(self.snippets[rows], int(home))

    def embed(self, rows: np.ndarray, home: int) -> np.ndarray:
        """The mean of the snippets of `rows` as a waveform ``(n_t, C)``, 0 off their channels."""
        out = np.zeros((self.n_t, self.n_channels))
        out[:, self.local[home]] = self.snippets[rows].mean(axis=0)
        return out

    def on_waveform(self, waveform: np.ndarray, home: int) -> tuple[np.ndarray, np.ndarray]:
        """A waveform ``(n_t, C)`` and its time derivative on `home`'s channels, whitened."""
        waveform_local = waveform[None][:, :, self.local[home]]
        return (self.whitener(waveform_local, home)[0],
                self.whitener(np.gradient(waveform_local, axis=1), home)[0])
