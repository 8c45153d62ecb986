"""phy GUI shell."""
