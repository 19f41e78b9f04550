"""``backup`` never leaves a partial copy where the copy belongs: killed at random points it
leaves either no target or a complete store that verify accepts (issue 22, item 3)."""

from __future__ import annotations

import json
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.errors import InvalidInputError, StorageError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = 300


def _store(data_dir: Path) -> set[str]:
    with open_embedded(data_dir) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        return {
            store.create_prompt(f"A robot arm stacks {i} blocks " * 10, {}, {}).id
            for i in range(PROMPTS)
        }


def _attempts(data: Path, target: Path, done: Path, *attempts: str) -> list[dict[str, object]]:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.backup_killer",
            *(str(path) for path in (data, target, done)),
            *attempts,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return [json.loads(line) for line in finished.stdout.splitlines()]


@pytest.mark.slow
def test_a_backup_killed_at_random_points_leaves_no_target_or_a_complete_copy(
    tmp_path: Path,
) -> None:
    data, copies, done = tmp_path / "data", tmp_path / "copies", tmp_path / "done"
    copies.mkdir()
    done.mkdir()
    ids = _store(data)
    target = copies / "copy.sqlite3"
    # One whole backup first: how many profiler events it makes, and how big the copy is.
    [counted, outcome] = _attempts(data, target, done, "count:0")
    events = int(counted["events"])  # type: ignore[call-overload]
    size = (done / "0" / "cosmos.sqlite3").stat().st_size
    assert outcome == {"attempt": 0, "killed": False, "existed": True}
    seed = random.randrange(2**32)
    chosen = random.Random(seed)
    # 15 kills at a random step of the method (before, during and after the copy, around the
    # fsyncs and the link), 15 at a random byte of the copy as SQLite writes it.
    points = [f"events:{chosen.randint(1, events)}" for _ in range(15)]
    points += [f"bytes:{chosen.randint(1, size - 1)}" for _ in range(15)]
    chosen.shuffle(points)
    for entry in (done / "0").iterdir():
        entry.unlink()
    (done / "0").rmdir()
    outcomes = _attempts(data, target, done, *points)
    assert len(outcomes) == 30, (seed, outcomes)
    for outcome in outcomes:
        index = int(outcome["attempt"])  # type: ignore[call-overload]
        where = f"seed {seed}, attempt {index} ({points[index]})"
        assert outcome["killed"] or outcome["existed"], where  # every byte limit is hit
        if outcome["existed"]:  # a complete copy, whether or not the kill came after it
            copy = done / str(index) / "cosmos.sqlite3"
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600, where
            with open_embedded(copy.parent, read_only=True) as database:
                store = CosmosStore(database)
                assert store.verify().ok, where
                assert {p.id for p in store.list_prompts(limit=1000)} == ids, where
    # Kills leave only hidden temporaries, never a file SQLite could take for the target or
    # its journal; they are not in the way of the next backup to the same path.
    assert not target.exists()
    assert all(p.name.startswith(".copy.sqlite3.") for p in copies.iterdir())
    assert all(p.name.endswith(".partial") for p in copies.iterdir())
    with open_embedded(data) as database:
        assert database.backup(target) == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.rename(done / "cosmos.sqlite3")
    with open_embedded(done) as database:
        assert CosmosStore(database).verify().ok


def test_a_backup_writes_a_hidden_temporary_then_links_it_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cosmos_mongo.embedded.engine as embedded  # the module that calls the file helpers

    seen: list[tuple[Path, int]] = []
    real = embedded._publish

    def publish(source: Path, target: Path) -> None:
        seen.append((source, stat.S_IMODE(source.stat().st_mode)))
        assert not target.exists()
        real(source, target)

    monkeypatch.setattr(embedded, "_publish", publish)
    _store(tmp_path / "data")
    target = tmp_path / "copy.sqlite3"
    with open_embedded(tmp_path / "data") as database:
        database.backup(target)
    [(partial, mode)] = seen
    assert partial.parent == tmp_path and partial.name.startswith(".copy.sqlite3.")
    assert partial.name.endswith(".partial") and mode == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.sqlite3", "data"]


def test_a_backup_that_fails_to_write_names_the_destination_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cosmos_mongo.embedded.engine as embedded  # the module that calls the file helpers

    def no_space(path: Path) -> None:
        raise OSError(28, "No space left on device")

    _store(tmp_path / "data")
    monkeypatch.setattr(embedded, "_fsync_path", no_space)
    target = tmp_path / "copy.sqlite3"
    with open_embedded(tmp_path / "data") as database, pytest.raises(StorageError) as caught:
        database.backup(target)
    assert f"backup {target}" in str(caught.value)
    assert str(tmp_path / "data") not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_backup_to_a_name_too_long_for_the_file_system_is_an_invalid_destination(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path / "data") as database, pytest.raises(InvalidInputError) as caught:
        database.backup(tmp_path / ("x" * 5000))
    assert caught.value.field == "destination"
