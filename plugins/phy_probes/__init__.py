"""Probes: .prb files (parsed as literals), built-in probes, MEA."""
