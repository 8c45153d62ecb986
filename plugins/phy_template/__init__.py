"""Template directories (Kilosort / phy 2 output)."""
