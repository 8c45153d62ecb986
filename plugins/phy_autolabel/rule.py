"""The rule that calls a cluster "good": clearly a single, well-isolated, fully detected unit.

Conservative by design: a cluster is good only when every test passes and
every metric could be computed; anything doubtful stays unsorted. The aim is
no false good cluster at all (a cluster labelled good that is not mostly one
true unit) at the price of leaving some true units unsorted.

The defaults, and why:

- ``min_spikes = 20``: below that, the isolation metrics (a covariance in
  ``4 channels x 3 features = 12`` dimensions) and the amplitude histogram
  mean little.
- ``min_snr = 6``: the peak of the mean band-passed waveform is at least 6
  noise standard deviations. With the usual 4.5-sigma detection threshold, a
  unit at 6 sigma loses under 10 % of its spikes to the threshold (its peak
  amplitudes spread by about one sigma); nearer the threshold, a cluster
  holds only the spikes the noise lifted above it (its measured SNR is then
  inflated, and most of the unit is missing) and background spikes look
  alike.
- ``max_contamination = 0.1``: refractory violations (intervals under
  ``refractory_period_ms``) imply at most 10 % of spikes from other neurons.
- ``min_isolation_distance = 30`` and ``max_l_ratio = 0.05`` (12 dimensions:
  a chi-square variable with 12 degrees of freedom exceeds 30 with
  probability 0.003): as many other spikes as the cluster has lie beyond
  that, and the other spikes within its core would add up to a few percent
  of it at most.
- ``max_amplitude_cutoff = 0.3``: the amplitude distribution is not cut
  off by the detection threshold (estimated missing fraction).
- ``max_split_separation = 4``: the features do not split in two along their
  main axis (one Gaussian cut at its best split gives Ashman's D of about
  2.7, clusters of 15-25 spikes up to about 3.7; two units merged, more).
- ``max_coincidence = 0.25``: at most a quarter of the spikes have a spike
  of one other nearby cluster within 1.5 ms (`coincidence_window_ms`). By
  chance, a 50 Hz neighbour takes 15 %; a template that matched what another
  left of the same spikes (seen at 1024 channels: 58 of its 66 spikes), or the
  echoes of a large unit's after-phase (35 of 35 spikes, 1.2 ms after that
  unit's), are no unit of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .quality import ClusterQuality


@dataclass(frozen=True)
class GoodRule:
    """Thresholds of the "good" rule (see the module docstring for the defaults)."""

    min_spikes: int = 20
    min_snr: float = 6.0
    max_contamination: float = 0.1
    min_isolation_distance: float = 30.0
    max_l_ratio: float = 0.05
    max_amplitude_cutoff: float = 0.3
    max_split_separation: float = 4.0
    max_coincidence: float = 0.25

    def failures(self, quality: ClusterQuality) -> list[str]:
        """Why a cluster is not good (empty: it is good). A missing metric is a failure."""
        tests = (
            ("n_spikes", quality.n_spikes, ">=", self.min_spikes),
            ("snr", quality.snr, ">=", self.min_snr),
            ("contamination", quality.contamination, "<=", self.max_contamination),
            ("isolation_distance", quality.isolation_distance, ">=",
             self.min_isolation_distance),
            ("l_ratio", quality.l_ratio, "<=", self.max_l_ratio),
            ("amplitude_cutoff", quality.amplitude_cutoff, "<=", self.max_amplitude_cutoff),
            ("split_separation", quality.split_separation, "<=", self.max_split_separation),
            ("coincidence", quality.coincidence, "<=", self.max_coincidence),
        )
        out = []
        for name, value, op, limit in tests:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out.append(f"{name} unknown")
            elif (value < limit) if op == ">=" else (value > limit):
                out.append(f"{name} {value:.3g} (need {op} {limit:g})")
        return out

    def is_good(self, quality: ClusterQuality) -> bool:
        return not self.failures(quality)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
