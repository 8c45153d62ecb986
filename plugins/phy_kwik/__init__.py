"""The Kwik format (klusta / SpikeDetekt): .kwik, .kwx, .raw.kwd."""

from phy_core import hookimpl


@hookimpl(trylast=True)
def phy_open_model(path, options):
    """Open ``*.kwik`` files as a `phy_kwik.model.KwikModel`."""
    if not str(path).endswith(".kwik"):
        return None
    from .model import KwikModel

    return KwikModel(path, channel_group=options.get("channel_group"),
                     clustering=options.get("clustering"))
