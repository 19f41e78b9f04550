"""The benchmark tables that docs/PERFORMANCE.md quotes are built from what they measure."""

from __future__ import annotations

import pytest

from benchmarks import bench_store


def test_the_primary_key_read_table_times_each_step_and_sums_the_three_engine_steps() -> None:
    table = bench_store.primary_key_read([40], repeat=5)

    header, _, *rows = table.splitlines()
    assert header == "| step | 40: median µs |"
    medians = {
        row.split(" | ")[0].lstrip("| "): float(row.split(" | ")[1].rstrip(" |")) for row in rows
    }
    assert len(medians) == 6 and all(median > 0 for median in medians.values())
    steps = list(medians.values())
    assert steps[5] == pytest.approx(sum(steps[1:4]), abs=0.15)  # each cell is rounded to 0.1
