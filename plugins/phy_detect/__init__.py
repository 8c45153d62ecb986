"""Spike detection (SpikeDetekt-style): stage plugins and the ``phy detect`` runner."""

from phy_core import hookimpl


@hookimpl(trylast=True)
def phy_register_stages():
    from . import filtering, floodfill, pca, reference, threshold, waveform, whitening

    return [stage for module in (filtering, reference, whitening, threshold, floodfill,
                                 waveform, pca)
            for stage in module.STAGES]


@hookimpl(trylast=True)
def phy_commands():
    from .command import detect_command

    return [detect_command]
