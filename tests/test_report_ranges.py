"""The report's split of the fleet into id ranges (registry.insight.report)."""

from __future__ import annotations

import uuid
from itertools import pairwise

import pytest

from registry.insight.report import id_ranges


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_id_ranges_cover_every_id_once(parts: int) -> None:
    ranges = id_ranges(parts)
    assert len(ranges) == parts
    assert ranges[0][0] == str(uuid.UUID(int=0))
    assert ranges[-1][1] == str(uuid.UUID(int=(1 << 128) - 1))
    for lo, hi in ranges:
        assert uuid.UUID(lo).int <= uuid.UUID(hi).int
    for (_, hi), (lo, _) in pairwise(ranges):
        assert uuid.UUID(lo).int == uuid.UUID(hi).int + 1
