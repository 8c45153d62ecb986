"""The error raised for unreadable or inconsistent Kwik datasets."""

from phy_core.errors import PhyError


class KwikError(PhyError, ValueError):
    """A Kwik dataset is missing, corrupted or inconsistent (the message names the file)."""
