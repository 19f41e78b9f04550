"""The benchmark tables that docs/PERFORMANCE.md quotes are built from what they measure."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks import bench_store, bench_transfer


def test_the_primary_key_read_table_times_each_step_sums_the_engine_steps_and_compares() -> None:
    table = bench_store.primary_key_read([40], repeat=5)

    header, _, *rows = table.splitlines()
    assert header == "| step | 40: median µs |"
    cells = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[1].rstrip(" |") for row in rows}
    *steps_named, ratio_named = cells
    medians = [float(cells[step]) for step in steps_named]
    assert len(medians) == 7 and all(median > 0 for median in medians)
    assert steps_named[1].startswith("baseline: predecessor SQLite plus the same model")
    assert medians[6] == pytest.approx(sum(medians[2:5]), abs=0.15)  # each cell is rounded
    # The ratio is the rounds' median, not the medians' ratio: only its form and sign are known.
    assert ratio_named.startswith("the whole `get_prompt` / the baseline")
    assert cells[ratio_named].endswith("x") and float(cells[ratio_named][:-1]) > 0


def test_the_embedded_only_table_times_every_operation_on_the_embedded_default() -> None:
    table = bench_store.embedded_only([300], repeat=2, clock=time.process_time)

    header, _, *rows = table.splitlines()
    assert header == "| N prompts | operation | best round, ms per call |"
    names = [row.split(" | ")[1].strip("`") for row in rows]
    assert names == list(bench_store.operations(None, bench_store.build(300)))
    assert all(row.startswith("| 300 | ") for row in rows)
    assert all(float(row.split(" | ")[2].rstrip(" |")) > 0 for row in rows)


def test_the_best_round_is_the_fastest_rounds_time_per_call() -> None:
    ticks = iter([0.0, 0.004, 10.0, 10.002, 20.0, 20.003])  # rounds of 2, 1 and 1.5 ms a call
    assert bench_store.best_of_rounds(lambda: None, 2, 3, lambda: next(ticks)) == pytest.approx(1.0)


def test_the_baseline_reads_the_same_prompt_model_as_the_store(tmp_path: Path) -> None:
    data = bench_store.build(20)
    baseline = bench_store.PredecessorBaseline(tmp_path, data)
    with bench_store.embedded_store(tmp_path / "embedded", data) as store:
        for prompt_id in data.originals[:3]:
            stored = store.get_prompt(prompt_id)
            assert stored is not None
            # The predecessor's table has no updated_at: the rest is the same model, field by field.
            assert baseline.get_prompt(prompt_id) == stored.model_copy(update={"updated_at": None})
    assert baseline.get_prompt("ps_" + "0" * 32) is None
    baseline.db.close()


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
