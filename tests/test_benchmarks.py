"""The benchmark tables that docs/PERFORMANCE.md quotes are built from what they measure."""

from __future__ import annotations

import pytest

from benchmarks import bench_store, bench_transfer


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


def test_the_transfer_table_times_import_export_and_copy_of_the_same_data() -> None:
    table, notes = bench_transfer.transfer([15, 30])

    header, _, *rows = table.splitlines()
    assert header.startswith("| N prompts + N runs | `import-sqlite` s | `export` s | `copy` s |")
    assert [row.split(" | ")[0] for row in rows] == ["| 15 + 15", "| 30 + 30"]
    for row in rows:
        cells = [float(cell) for cell in row.strip(" |").split(" | ")[1:]]
        imported, exported, copied, checked, *per_thousand, to_export, to_copy = cells
        assert min(imported, exported, copied, checked) > 0
        assert len(per_thousand) == 3 and all(rate > 0 for rate in per_thousand)
        assert to_export == pytest.approx(exported / imported, abs=0.02)  # of rounded cells
        assert to_copy == pytest.approx(copied / imported, abs=0.02)
    assert len(notes) == 4 and notes[-1].startswith("- At 30 prompts and 30 runs, `export`")
