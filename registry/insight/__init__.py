"""Fleet insight (CONTRACT §13): incidents, flapping and availability history.

- `signature`: a sample error reduced to its cause (the incident key).
- `recording`: the hooks the status-change paths call in their own transaction.
- `incidents`, `flapping`: the bookkeeping those hooks and the insight sweep run.
- `history`: availability timelines and the fleet report, read from structure_events.
"""
