"""``python -m simulations bench-drd`` runs, small, on 127.0.0.1: sealed and clear updates are
both counted, and every sealed frame was taken."""

from __future__ import annotations

from typing import Any

import pytest

from simulations.cli import run

pytestmark = pytest.mark.timeout(60)


def test_bench_drd_measures_both_sides() -> None:
    result: dict[str, Any] = run(
        ["bench-drd", "--sessions", "2", "--updates", "6", "--rounds", "1"]
    )
    assert result["sealed_updates_per_s"] > 0
    assert result["clear_updates_per_s"] > 0
    assert result["frames_sealed"] >= 2 + 6  # two open sessions, six updates
    assert result["frames_refused"] == 0
    assert result["session_set_up_ms"]["sealed"]["count"] == 2
