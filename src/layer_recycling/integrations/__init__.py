"""Thin modules at the edge: each imports its framework (Ray, ...) only inside itself; the core imports none."""
