"""Periodic sweeps (CONTRACT §5): each finds its candidates by an indexed query and changes rows conditionally."""
