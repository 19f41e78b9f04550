"""Damage in the embedded database's file is never a silent wrong answer, and never turns
``repair`` into deletion.

A small store is built once; each test flips bytes in a copy of its file, in the SQLite pages
themselves (as a failing disk would): a document's body, key, collection name and arrival
number, an index entry, and the index catalog (its document and its built-index row). For each
flip every helper's answer is the right one or a clear ``StorageError`` (reason
``"damaged"``), ``verify`` names the damage, and ``repair`` refuses and changes no byte. Index
damage is then dealt with by ``rebuild-indexes``, after which everything is in order again.
A seeded run of 100 random single-byte flips over the data pages checks the same of each:
every answer right or a clear error, and ``verify`` finding each flip that is not in free
space. A deleted ``-wal`` that held commits is refused.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import pytest
from click.testing import CliRunner

from cosmos_mongo.cli import cli
from cosmos_mongo.embedded import AsyncEmbeddedDatabase, open_embedded
from cosmos_mongo.errors import StorageError
from cosmos_mongo.store import AsyncCosmosStore, CosmosStore

FILE = "cosmos.sqlite3"
DAMAGED = "a clear error: damaged"


@dataclass(frozen=True)
class World:
    """The pristine store (a directory holding only its file) and its right answers."""

    directory: Path
    prompt_ids: list[str]
    run_ids: list[str]
    answers: dict[str, Any]


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _calls(
    store: CosmosStore, world_ids: tuple[list[str], list[str]]
) -> dict[str, Callable[[], Any]]:
    prompt_ids, run_ids = world_ids
    calls: dict[str, Callable[[], Any]] = {
        "list_prompts": lambda: store.list_prompts(limit=100),
        "list_prompts enhanced": lambda: store.list_prompts(limit=100, enhanced=True),
        "list_enhanced_prompts": lambda: store.list_enhanced_prompts(100),
        "search_prompts": lambda: store.search_prompts("robot", limit=100),
        "list_runs": lambda: store.list_runs(limit=100),
        "list_runs completed": lambda: store.list_runs(status="completed", limit=100),
        "iter_documents prompts": lambda: list(store.iter_documents("prompts")),
        "iter_documents runs": lambda: list(store.iter_documents("runs")),
    }
    for prompt_id in prompt_ids:
        calls[f"get_prompt {prompt_id}"] = lambda i=prompt_id: store.get_prompt(i)
        calls[f"list_runs {prompt_id}"] = lambda i=prompt_id: store.list_runs(i, limit=100)
        calls[f"history {prompt_id}"] = lambda i=prompt_id: store.get_enhancement_history(i)
        calls[f"lineage {prompt_id}"] = lambda i=prompt_id: store.get_lineage(i)
    for run_id in run_ids:
        calls[f"get_run {run_id}"] = lambda i=run_id: store.get_run(i)
    return calls


def _answers(store: CosmosStore, ids: tuple[list[str], list[str]]) -> dict[str, Any]:
    """Every helper's answer; a StorageError that says the store is damaged is recorded as
    such (any other error fails the test)."""
    found: dict[str, Any] = {}
    for name, call in _calls(store, ids).items():
        try:
            found[name] = _plain(call())
        except StorageError as exc:
            assert exc.reason == "damaged", (name, exc)
            assert "verify" in str(exc), exc
            found[name] = DAMAGED
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    directory = tmp_path_factory.mktemp("pristine")
    with open_embedded(directory) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        prompts = [store.create_prompt(f"A robot arm stacks blocks {i}", {}, {}) for i in range(5)]
        for prompt in prompts[:3]:
            store.enhance_prompt(prompt.id, enhanced_text=f"In detail, {prompt.prompt_text}")
        run_ids = [run.id for run in store.list_runs(limit=100)]
        prompt_ids = [prompt.id for prompt in store.list_prompts(limit=100)]
        answers = _answers(store, (prompt_ids, run_ids))
        assert DAMAGED not in answers.values()
        assert store.verify().ok
    assert sorted(p.name for p in directory.iterdir()) == [FILE]  # a clean close: no -wal
    return World(directory, prompt_ids, run_ids, answers)


@pytest.fixture
def copy(world: World, tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(world.directory, target)
    return target


# -- finding bytes in the file's pages -----------------------------------------------------


def _pages(file: Path) -> dict[str, list[int]]:
    """The page numbers of each table and index (SQLite's dbstat)."""
    connection = sqlite3.connect(file)
    try:
        found: dict[str, list[int]] = {}
        for name, page in connection.execute("SELECT name, pageno FROM dbstat ORDER BY pageno"):
            found.setdefault(name, []).append(page)
        (size,) = connection.execute("PRAGMA page_size").fetchone()
    finally:
        connection.close()
    found["page size"] = [size]
    return found


def _offset(file: Path, tree: str, needle: bytes) -> int:
    """The file offset of ``needle``, found once, in the pages of table or index ``tree``."""
    pages, data = _pages(file), file.read_bytes()
    size = pages["page size"][0]
    hits = [
        (page - 1) * size + at
        for page in pages[tree]
        for at in _all(data[(page - 1) * size : page * size], needle)
    ]
    assert len(hits) == 1, (tree, needle, hits)
    return hits[0]


def _all(haystack: bytes, needle: bytes) -> Iterator[int]:
    at = haystack.find(needle)
    while at >= 0:
        yield at
        at = haystack.find(needle, at + 1)


def _flip(file: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= mask
    file.write_bytes(bytes(data))


def _row(file: Path, collection: str, document_id: str) -> tuple[bytes, bytes, int, int]:
    connection = sqlite3.connect(file)
    try:
        key = bson.encode({"_id": document_id})
        body, crc, arrival = connection.execute(
            "SELECT body, body_crc, arrival FROM documents WHERE collection = ? AND key = ?",
            (collection, key),
        ).fetchone()
    finally:
        connection.close()
    return key, body, crc, arrival


def _int_size(value: int) -> int:
    """How many bytes SQLite stores an integer in (serial types 1-6)."""
    for size in (1, 2, 3, 4, 6, 8):
        if -(1 << (8 * size - 1)) <= value < 1 << (8 * size - 1):
            return size
    raise AssertionError(value)


def _body_offset(file: Path, collection: str, document_id: str) -> int:
    _, body, _, _ = _row(file, collection, document_id)
    return _offset(file, "documents", body)


def _flip_body(file: Path, world: World) -> str:
    document_id = world.prompt_ids[-1]
    _, body, _, _ = _row(file, "prompts", document_id)
    _flip(file, _body_offset(file, "prompts", document_id) + body.index(b"stacks"))
    return f"prompts {document_id}"


def _flip_key(file: Path, world: World) -> str:
    key, _, _, _ = _row(file, "prompts", world.prompt_ids[-1])
    _flip(file, _offset(file, "documents", b"prompts" + key) + len(b"prompts") + len(key) - 3)
    return "prompts "


def _flip_collection(file: Path, world: World) -> str:
    key, _, _, _ = _row(file, "prompts", world.prompt_ids[-1])
    _flip(file, _offset(file, "documents", b"prompts" + key))  # prompts -> qrompts
    return "qrompts "


def _flip_arrival(file: Path, world: World) -> str:
    document_id = world.prompt_ids[-1]
    key, body, crc, arrival = _row(file, "prompts", document_id)
    assert 2 <= arrival < 127  # one byte, and its neighbour (arrival ^ 1) is another document's
    connection = sqlite3.connect(file)
    (id_crc,) = connection.execute(
        "SELECT id_crc FROM documents WHERE collection = 'prompts' AND key = ?", (key,)
    ).fetchone()
    connection.close()
    # After the body: its checksum, the identity's (added to the table before arrival was, in
    # a new file), then the arrival number.
    end = _body_offset(file, "prompts", document_id) + len(body)
    stored = b"".join(value.to_bytes(_int_size(value), "big") for value in (crc, id_crc))
    assert file.read_bytes()[end : end + len(stored) + 1] == stored + bytes([arrival])
    _flip(file, end + len(stored))
    return f"prompts {document_id}"


def _entry(file: Path, index: str, document_id: str) -> bytes:
    connection = sqlite3.connect(file)
    try:
        key = bson.encode({"_id": document_id})
        (entry,) = connection.execute(
            "SELECT e.key FROM entries e JOIN built_indexes b ON b.ix = e.ix "
            "JOIN documents d ON d.collection = b.collection AND d.arrival = e.arrival "
            "WHERE b.name = ? AND d.key = ?",
            (index, key),
        ).fetchone()
    finally:
        connection.close()
    return bytes(entry)


def _flip_entry_key(file: Path, world: World) -> str:
    entry = _entry(file, "prompts_created_at_id", world.prompt_ids[-1])
    # The first byte of the date: the entry moves far from its document's place.
    _flip(file, _offset(file, "entries", entry) + 2, 0x10)
    return "index prompts.prompts_created_at_id:"


def _flip_entry_arrival(file: Path, world: World) -> str:
    entry = _entry(file, "prompts_created_at_id", world.prompt_ids[-1])
    _flip(file, _offset(file, "entries", entry) + len(entry), 0x40)  # names no document
    return "index prompts.prompts_created_at_id:"


def _flip_catalog_row(file: Path, world: World) -> str:
    _flip(file, _offset(file, "built_indexes", b"prompts_created_at_id") + 9)
    return "index prompts.prompts"


def _flip_catalog_document(file: Path, world: World) -> str:
    _flip(file, _body_offset(file, "system.indexes", "prompts.prompts_created_at_id") + 30)
    return "system.indexes prompts.prompts_created_at_id:"


FLIPS = {
    "body": (_flip_body, False),
    "key": (_flip_key, False),
    "collection": (_flip_collection, False),
    "arrival": (_flip_arrival, False),
    "index entry key": (_flip_entry_key, True),
    "index entry arrival": (_flip_entry_arrival, True),
    "catalog row": (_flip_catalog_row, True),
    "catalog document": (_flip_catalog_document, False),
}


def _state(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _repair_refuses_and_changes_nothing(directory: Path) -> None:
    before = _state(directory)
    with open_embedded(directory) as database:
        with pytest.raises(StorageError, match="repair changed nothing") as raised:
            CosmosStore(database).repair()
        assert raised.value.reason == "damaged"
        assert "backup" in str(raised.value) and "rebuild-indexes" in str(raised.value)
    assert _state(directory) == before


@pytest.mark.parametrize("flip", list(FLIPS))
def test_each_kind_of_flipped_byte_gives_right_answers_or_a_clear_error_and_verify_names_it(
    world: World, copy: Path, flip: str
) -> None:
    change, indexes_only = FLIPS[flip]
    named = change(copy / FILE, world)
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        answers = _answers(store, (world.prompt_ids, world.run_ids))
        wrong = {
            name: answer
            for name, answer in answers.items()
            if answer not in (DAMAGED, world.answers[name])
        }
        assert not wrong, wrong
        report = store.verify()
    assert not report.ok
    assert any(line.startswith(named) for line in report.damaged_documents), report
    _repair_refuses_and_changes_nothing(copy)
    # rebuild-indexes deals with index damage, and says what it cannot deal with.
    result = CliRunner().invoke(cli, ["--data-dir", str(copy), "rebuild-indexes"])
    assert (result.exit_code == 0) is indexes_only, result.output
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        if indexes_only:
            assert store.verify().ok
            assert _answers(store, (world.prompt_ids, world.run_ids)) == world.answers
        else:
            assert "not rebuilt (restore from a backup)" in result.output
            assert not store.verify().ok
    if not indexes_only:
        _repair_refuses_and_changes_nothing(copy)


def test_rebuild_indexes_repairs_what_it_reports_and_a_second_run_changes_nothing(
    world: World, copy: Path
) -> None:
    _flip_entry_key(copy / FILE, world)
    runner = CliRunner()
    first = runner.invoke(cli, ["--data-dir", str(copy), "rebuild-indexes", "--json"])
    assert first.exit_code == 0, first.output
    done = json.loads(first.output)
    by_name = {index["name"]: index for index in done["indexes"]}
    assert by_name["prompts.prompts_created_at_id"]["removed"] == 1
    assert by_name["prompts.prompts_created_at_id"]["added"] == 1
    assert done["changes"] == 2
    before = _state(copy)
    second = runner.invoke(cli, ["--data-dir", str(copy), "rebuild-indexes"])
    assert second.exit_code == 0, second.output
    assert "0 changes (all was in order)" in second.output
    with open_embedded(copy) as database:
        assert CosmosStore(database).verify().ok
    assert _state(copy)[FILE] == before[FILE]


def test_100_random_byte_flips_each_give_right_answers_or_a_clear_error_and_verify_finds_them(
    world: World, tmp_path: Path
) -> None:
    pristine = (world.directory / FILE).read_bytes()
    pages = _pages(world.directory / FILE)
    size = pages["page size"][0]
    data_pages = sorted(
        page
        for name, numbers in pages.items()
        if name not in ("sqlite_schema", "page size")
        for page in numbers
    )
    id_index_pages = set(pages["documents_id"])
    chooser = random.Random(22)
    found = harmless = 0
    for trial in range(100):
        directory = tmp_path / f"flip{trial}"
        directory.mkdir()
        data = bytearray(pristine)
        page = chooser.choice(data_pages)
        offset = (page - 1) * size + chooser.randrange(size)
        data[offset] ^= 1 << chooser.randrange(8)
        (directory / FILE).write_bytes(bytes(data))
        try:
            with open_embedded(directory) as database:
                store = CosmosStore(database)
                answers = _answers(store, (world.prompt_ids, world.run_ids))
                damage = store.verify().damaged_documents
        except StorageError as exc:  # the file cannot even be opened: a clear error
            assert exc.reason == "damaged" or "malformed" in str(exc), (offset, exc)
            found += 1
            continue
        wrong = {
            name: answer
            for name, answer in answers.items()
            if answer not in (DAMAGED, world.answers[name])
        }
        # The documented limit (DEVELOPMENT.md, "Integrity"): a walk by _id stopped unseen
        # by a changed entry of SQLite's own _id index, which its integrity check finds.
        if wrong:
            assert page in id_index_pages, (offset, wrong, damage)
            assert all(name.startswith("iter_documents ") for name in wrong), (offset, wrong)
            assert any(line.startswith("file: ") for line in damage), (offset, damage)
        if damage:
            found += 1
            _repair_refuses_and_changes_nothing(directory)
        else:  # nothing to find: the byte was in free space, and every answer is unchanged
            assert answers == world.answers, (offset, answers)
            harmless += 1
        shutil.rmtree(directory)
    assert found + harmless == 100 and found >= 20, (found, harmless)


def test_the_cli_names_the_damage_and_its_remedies_and_repair_exits_with_a_clear_error(
    world: World, copy: Path
) -> None:
    named = _flip_body(copy / FILE, world)
    runner = CliRunner()
    verified = runner.invoke(cli, ["--data-dir", str(copy), "verify"])
    assert verified.exit_code == 1, verified.output
    assert "FAIL the stored bytes are intact" in verified.output
    assert "rebuild-indexes" in verified.output and named in verified.output
    before = _state(copy)
    repaired = runner.invoke(cli, ["--data-dir", str(copy), "repair"])
    assert repaired.exit_code == 1
    assert "repair changed nothing" in repaired.output and "Traceback" not in repaired.output
    assert _state(copy) == before


def test_the_async_store_reports_the_same_damage_and_refuses_the_same_repair(
    world: World, copy: Path
) -> None:
    _flip_entry_arrival(copy / FILE, world)

    async def scenario() -> list[str]:
        with open_embedded(copy) as database:
            store = AsyncCosmosStore(AsyncEmbeddedDatabase(database))
            with pytest.raises(StorageError, match="repair changed nothing"):
                await store.repair()
            return (await store.verify()).damaged_documents

    with open_embedded(copy) as database:
        expected = CosmosStore(database).verify().damaged_documents
    assert asyncio.run(scenario()) == expected


def _entry_crc(ix: int, key: bytes, arrival: int) -> int:
    """An index entry's checksum, as the engine takes it (written out here, so that a change
    to the engine's rule shows as a failing test)."""
    return zlib.crc32(arrival.to_bytes(8, "big", signed=True), zlib.crc32(key, ix))


def _rewrite_entry(file: Path, world: World, *, with_checksum: bool) -> None:
    """Rewrite an entry's key in place, SQLite's structure intact: the entry moves to where
    its new key sorts, naming the same document."""
    connection = sqlite3.connect(file)
    entry = _entry(file, "prompts_created_at_id", world.prompt_ids[-1])
    changed = entry[:-3] + b"z" + entry[-2:]
    ((ix, arrival),) = connection.execute(
        "SELECT ix, arrival FROM entries WHERE key = ?", (entry,)
    ).fetchall()
    crc = _entry_crc(ix, changed, arrival) if with_checksum else _entry_crc(ix, entry, arrival)
    connection.execute("UPDATE entries SET key = ?, crc = ? WHERE key = ?", (changed, crc, entry))
    connection.commit()
    connection.close()


def test_an_entry_changed_without_its_checksum_stops_the_reads_it_serves_and_the_quick_check(
    world: World, copy: Path
) -> None:
    _rewrite_entry(copy / FILE, world, with_checksum=False)
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        with pytest.raises(StorageError, match="an entry fails its checksum") as raised:
            store.list_prompts(limit=100)
        assert raised.value.reason == "damaged"
        assert "prompts.prompts_created_at_id" in str(raised.value)
        assert database.damaged_documents(full=False) == [
            "index prompts.prompts_created_at_id: an entry fails its checksum (the stored "
            "bytes changed on disk)"
        ]
        assert not store.verify(quick=True).ok
        assert database.rebuild_indexes().changes == 2
        assert store.verify().ok
        assert _answers(store, (world.prompt_ids, world.run_ids)) == world.answers


def test_entries_changed_consistently_are_found_by_the_full_check_only(
    world: World, copy: Path
) -> None:
    # The entry's checksum rewritten with it (no byte flip does that): only re-deriving the
    # entries from the documents shows it, which the quick check leaves out (it reads no
    # document, so a schedule can afford it).
    _rewrite_entry(copy / FILE, world, with_checksum=True)
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        assert store.verify(quick=True).ok
        assert database.damaged_documents(full=False) == []
        full = store.verify()
        assert [line for line in full.damaged_documents if line.startswith("index ")] == [
            "index prompts.prompts_created_at_id: its entries differ from what its documents "
            "give (8 stored, 8 expected)"
        ]
        assert database.rebuild_indexes().changes == 2
        assert store.verify().ok


def _as_second_format(file: Path) -> None:
    """Rewrite a file as the second format left it: no identity checksums, and built index
    rows without one."""
    connection = sqlite3.connect(file)
    connection.execute("ALTER TABLE documents DROP COLUMN id_crc")
    connection.execute("ALTER TABLE built_indexes DROP COLUMN crc")
    connection.execute("ALTER TABLE entries DROP COLUMN crc")
    connection.execute("UPDATE meta SET value = 2 WHERE name = 'format'")
    connection.commit()
    connection.close()


def test_a_second_format_file_upgrades_once_and_damage_found_before_stays_damage(
    world: World, copy: Path
) -> None:
    _as_second_format(copy / FILE)
    with open_embedded(copy, read_only=True) as database:  # read as it is, not upgraded
        assert _answers(CosmosStore(database), (world.prompt_ids, world.run_ids)) == world.answers
    named = _flip_body(copy / FILE, world)  # damage its body-only checksum already shows
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        connection = database.engine._conn
        assert connection.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (4,)
        for table in ("built_indexes", "entries"):
            assert connection.execute(
                f"SELECT count(*) FROM {table} WHERE crc IS NULL"
            ).fetchone() == (0,)
        report = store.verify()
        assert [line for line in report.damaged_documents if line.startswith("prompts")] == [
            f"{named}: checksum mismatch: the stored bytes changed on disk"
        ]
        answers = _answers(store, (world.prompt_ids, world.run_ids))
    assert {name for name, answer in answers.items() if answer != world.answers[name]} == {
        name for name, answer in answers.items() if answer == DAMAGED
    }
    assert (
        answers[f"get_prompt {world.prompt_ids[0]}"]
        == world.answers[f"get_prompt {world.prompt_ids[0]}"]
    )


def test_a_third_format_file_gets_entry_checksums_once_and_keeps_the_checksums_it_had(
    world: World, copy: Path
) -> None:
    connection = sqlite3.connect(copy / FILE)
    connection.execute("ALTER TABLE entries DROP COLUMN crc")
    connection.execute("UPDATE meta SET value = 3 WHERE name = 'format'")
    connection.commit()
    connection.close()
    with open_embedded(copy, read_only=True) as database:  # read as it is, not upgraded
        assert _answers(CosmosStore(database), (world.prompt_ids, world.run_ids)) == world.answers
    # Damage its identity checksum shows: taking that checksum again would hide it.
    named = _flip_arrival(copy / FILE, world)
    with open_embedded(copy) as database:
        connection = database.engine._conn
        assert connection.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (4,)
        assert connection.execute("SELECT count(*) FROM entries WHERE crc IS NULL").fetchone() == (
            0,
        )
        report = CosmosStore(database).verify()
    assert any(
        line.startswith(named) and "identity checksum mismatch" in line
        for line in report.damaged_documents
    ), report.damaged_documents


def test_body_checksums_stay_what_older_versions_check_and_their_rows_are_read(
    world: World, copy: Path
) -> None:
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        prompt = store.update_prompt(world.prompt_ids[0], prompt_text="A robot arm, rewritten")
    connection = sqlite3.connect(copy / FILE)
    rows = connection.execute("SELECT body, body_crc, id_crc FROM documents").fetchall()
    assert all(zlib.crc32(body) == crc and id_crc is not None for body, crc, id_crc in rows)
    # A row as the previous version inserts it: a body checksum, no identity checksum.
    body = bson.encode({"_id": "ps_" + "0" * 32, "prompt_text": "old", "inputs": {}})
    connection.execute(
        "INSERT INTO documents (collection, key, seq, body, body_crc, arrival) "
        "VALUES ('prompts', ?, 1, ?, ?, 999)",
        (bson.encode({"_id": "ps_" + "0" * 32}), body, zlib.crc32(body)),
    )
    connection.commit()
    connection.close()
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        assert store.get_prompt(prompt.id) == prompt
        assert database["prompts"].find_one({"_id": "ps_" + "0" * 32})["prompt_text"] == "old"
        # (not a whole insert, which would bump the counter and add index entries too)
        assert not any("checksum" in line for line in database.damaged_documents())


def test_damage_in_sqlites_own_id_index_is_named_and_rebuild_indexes_repairs_it(
    world: World, copy: Path
) -> None:
    # The expression entry of the _id index (collection, type byte, the id's bytes), not the
    # row: SQLite's integrity check finds it, and every row being intact, it is rebuilt.
    document_id = world.prompt_ids[-1]
    at = _offset(copy / FILE, "documents_id", b"prompts\x02" + document_id.encode())
    _flip(copy / FILE, at + len(b"prompts\x02") + 10)
    with open_embedded(copy) as database:
        report = CosmosStore(database).verify()
    assert any(
        line.startswith("file: ") and "documents_id" in line for line in report.damaged_documents
    )
    _repair_refuses_and_changes_nothing(copy)
    result = CliRunner().invoke(cli, ["--data-dir", str(copy), "rebuild-indexes"])
    assert result.exit_code == 0, result.output
    assert "fixed: SQLite's indexes of documents rebuilt" in result.output
    with open_embedded(copy) as database:
        store = CosmosStore(database)
        assert store.verify().ok
        assert _answers(store, (world.prompt_ids, world.run_ids)) == world.answers


# -- a deleted -wal ------------------------------------------------------------------------


def test_a_clean_close_leaves_no_commit_only_in_the_wal(tmp_path: Path) -> None:
    holder = open_embedded(tmp_path)  # another process's view: its -wal stays while it is open
    try:
        with open_embedded(tmp_path) as database:
            prompt = CosmosStore(database).create_prompt("Waves roll onto a beach", {}, {})
        # the clean close copied the commit into the file: losing the -wal now loses nothing
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(tmp_path / FILE, copy / FILE)
        with open_embedded(copy) as database:
            assert CosmosStore(database).get_prompt(prompt.id) == prompt
    finally:
        holder.close()


def test_a_deleted_wal_that_held_commits_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    # A process killed after its commit: the commit is in the -wal only.
    code = (
        "import os, sys; from cosmos_mongo.embedded import open_embedded; "
        "from cosmos_mongo.store import CosmosStore; db = open_embedded(sys.argv[1]); "
        "CosmosStore(db).create_prompt('Waves roll onto a beach', {}, {}); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    wal = tmp_path / f"{FILE}-wal"
    assert wal.stat().st_size > 0
    wal.unlink()
    before = _state(tmp_path)
    for read_only in (False, True):
        with pytest.raises(StorageError, match="lost recent commits") as raised:
            open_embedded(tmp_path, read_only=read_only)
        assert raised.value.reason == "damaged"
        assert f"{FILE}-shm" in str(raised.value) and "backup" in str(raised.value)
    assert _state(tmp_path) == before
    # Accepting the loss, as the error says: delete the -shm.
    (tmp_path / f"{FILE}-shm").unlink()
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        assert [p.prompt_text for p in store.list_prompts()] == ["A robot arm stacks blocks"]
        assert store.verify().ok


def test_a_read_of_many_ranges_in_one_statement_checks_the_entries_around_each(
    tmp_path: Path,
) -> None:
    # An $in of 60 values reads 60 ranges of the index in one statement, and the entries
    # around all of them in one more.
    with open_embedded(tmp_path) as database:
        things = database["things"]
        things.create_index([("n", 1)], name="n")
        things.insert_many([{"_id": f"t{n:04d}", "n": n} for n in range(900)])
        wanted = list(range(0, 120, 2))
        database.engine.stats.documents_decoded = 0
        found = things.find({"n": {"$in": wanted}})
        assert sorted(document["n"] for document in found) == wanted
        assert database.engine.stats.documents_decoded == len(wanted)  # through the index
    # The entry of n = 51 (between two ranges read) made to sort after every other, in
    # place: a read of the range before it sees it just outside that range, and stops.
    connection = sqlite3.connect(tmp_path / FILE)
    ((ix,),) = connection.execute("SELECT ix FROM built_indexes WHERE name = 'n'").fetchall()
    keys = [row[0] for row in connection.execute("SELECT key FROM entries WHERE ix = ?", (ix,))]
    connection.close()
    _flip(tmp_path / FILE, _offset(tmp_path / FILE, "entries", sorted(keys)[51]), 0x80)
    with open_embedded(tmp_path) as database:
        with pytest.raises(StorageError, match=r"index things\.n") as raised:
            database["things"].find({"n": {"$in": wanted}})
        assert raised.value.reason == "damaged"
