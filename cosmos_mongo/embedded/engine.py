"""The engine: one SQLite connection, a lock, the index catalog; read and write transactions,
units of work, format upgrades, and the maintenance commands (verify, rebuild, backup, compact).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

import mongomock as _mongomock

from cosmos_mongo.embedded.integrity import (
    _broken_entries,
    _catalog_crc,
    _catalog_row_intact,
    _checked_document,
    _damage_error,
    _Damaged,
    _entry_crc,
    _identity_crc,
    _intact,
    _mark_built,
    _stored_types,
)
from cosmos_mongo.embedded.keys import _FieldKeys, _IndexSpec
from cosmos_mongo.embedded.reading import _Reader
from cosmos_mongo.embedded.storage import (
    _ARRIVAL_FORMAT,
    _BATCH,
    _CHECKPOINT_SECONDS,
    _ENTRIES_TABLE,
    _ENTRY_FORMAT,
    _FORMAT,
    _IDENTITY_FORMAT,
    _INDEX_CATALOG,
    _PARTIAL_ENTRIES_MARK,
    _SCHEMA,
    _check_header,
    _check_no_lost_commits,
    _create_if_missing,
    _fsync_path,
    _key_label,
    _nothing_can_write,
    _publish,
    _Stored,
)
from cosmos_mongo.embedded.writing import _grouped_by_lead, _keyed_differently, _unbuild, _Writer
from cosmos_mongo.errors import InvalidInputError, ReadOnlyError, StorageError

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
mongomock: Any = _mongomock


T = TypeVar("T")


@dataclass
class EngineStats:
    """What the engine did, for tests and benchmarks."""

    documents_decoded: int = 0
    write_transactions: int = 0


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite (or Python reading its text) found the file's bytes damaged."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "decode to UTF-8" in str(exc)


class _SQLiteErrors:
    """The engine's one error boundary: SQLite's errors become ``StorageError`` naming the
    file. (A class, not a generator: every operation enters it.)"""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, sqlite3.Error):
            if _is_damage(exc):
                raise _damage_error(self.path, "the file's structure", str(exc)) from exc
            raise StorageError(f"embedded database {self.path}: {exc}") from exc


_HASH_MASK: Final = (1 << 64) - 1  # verify sums entry hashes modulo 2**64


@dataclass(frozen=True)
class IndexRebuilt:
    """One index as ``rebuild_indexes`` left it: ``name`` is "collection.index",
    ``entries`` how many it now holds, ``removed`` and ``added`` what changed, and
    ``order_changed`` whether its use for sorts was put right."""

    name: str
    entries: int
    removed: int = 0
    added: int = 0
    order_changed: bool = False


@dataclass(frozen=True)
class IndexRebuild:
    """What ``rebuild_indexes`` did: each index, the catalog rows it removed or made,
    the entries of indexes that do not exist that it removed, and the damage it cannot
    rebuild from (damaged documents: restore them from a backup)."""

    indexes: list[IndexRebuilt]
    catalog_fixed: list[str]
    stray_entries_removed: int
    not_rebuilt: list[str]

    @property
    def changes(self) -> int:
        """How many entries and catalog rows it wrote or removed (0: all was in order)."""
        return (
            sum(i.removed + i.added + i.order_changed for i in self.indexes)
            + len(self.catalog_fixed)
            + self.stray_entries_removed
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "changes": self.changes}


class EmbeddedEngine:
    """One SQLite file, read and written one operation (one transaction) at a time."""

    def __init__(self, path: Path, database: str, *, read_only: bool = False) -> None:
        self.path = path
        self.name = database
        self.read_only = read_only
        self._errors = _SQLiteErrors(path)
        self._key_reader: _Reader | None = None
        self.stats = EngineStats()
        self.damaged: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()
        self._unit_depth = 0  # > 0 inside unit_of_work(): writes share one transaction
        self._unit_seq: int | None = None  # the write stamp of the open transaction
        self._catalog: dict[str, list[tuple[_IndexSpec, bool]]] = {}
        self._catalog_rows: list[dict[str, Any]] = []
        self._by_lead: dict[str, dict[str, list[tuple[_IndexSpec, bool]]]] = {}
        self._catalog_version: int | None = None
        # mongomock's update and projection code runs on a scratch collection holding only
        # the documents one operation touches.
        self._scratch = mongomock.MongoClient(tz_aware=True)["scratch"]["documents"]
        self.arrival = "arrival"  # the column giving insertion order (see below)
        self.by_arrival = "INDEXED BY documents_arrival"
        self.id_index = False  # whether the file has the _id index (documents_id)
        self.identity_checked = False  # whether the file has identity checksums (format 3)
        self.id_crc = self.joined_id_crc = "NULL"  # their column, or NULL where there is none
        self.entry_crc = self.joined_entry_crc = "NULL"  # the same for entries' (format 4)
        try:
            _check_no_lost_commits(path)
            if read_only:
                self._conn = self._connect_read_only(path)
            else:
                _create_if_missing(path)
                self._conn = self._connect(f"file:{quote(str(path))}?mode=rw")
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._upgrade()
            # A first-format file opened read-only cannot be upgraded: its rows are read in
            # the order of their last write, and every query scans. A second-format one is
            # read with the checksums it has (of bodies alone).
            found = self._known_format()
            self._set_checked(found)
            self.arrival = "arrival" if found >= _ARRIVAL_FORMAT else "seq"
            self.by_arrival = "INDEXED BY documents_arrival" if self.arrival == "arrival" else ""
            # Made on every write open; a file opened read-only before that is scanned instead.
            self.id_index = (
                self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'documents_id'"
                ).fetchone()
                is not None
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the embedded database at {path}: {exc}") from exc

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
        )

    def _connect_read_only(self, path: Path) -> sqlite3.Connection:
        """The file opened read-only; a missing one reads as an empty store and is not made.
        A file of the first format (no indexes on disk yet) is read by scanning.

        Where nothing can write (a read-only mount, or a directory this process cannot write,
        so no -wal/-shm can be made beside the file), it is opened ``immutable``: SQLite then
        takes no locks and creates no file. A non-empty -wal there holds commits that an
        immutable open would not see: it is read normally if SQLite can, else refused.

        Raises:
            StorageError: such a -wal cannot be read.
        """
        if not path.exists():
            connection = self._connect("file::memory:")
            self._conn = connection
            self._upgrade()
            return connection
        _check_header(path)
        name = quote(str(path))
        if not _nothing_can_write(path):
            return self._connect_query_only(name)
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            connection = self._connect(f"file:{name}?mode=ro")
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                connection.close()
                raise StorageError(
                    f"the embedded database {path} cannot be read where it is: its {wal.name} "
                    f"holds commits not yet in the file, and {path.parent} cannot be written "
                    "(read-only media?); copy the directory to writable storage and open it "
                    "there"
                ) from exc
            return connection
        return self._connect(f"file:{name}?mode=ro&immutable=1")

    def _connect_query_only(self, name: str) -> sqlite3.Connection:
        """A read-only open where files can be made: opened for writing with every write
        refused (``query_only``). While open it shares the -wal and -shm with writers, as any
        reader must to see their commits; unlike a ``mode=ro`` reader, which cannot remove
        them, the last connection to close removes both, so read-only use leaves the directory
        as it found it. SQLite opens a file this process may not write read-only instead."""
        connection = self._connect(f"file:{name}?mode=rw")
        connection.execute("PRAGMA query_only=1")
        return connection

    def _format(self) -> int:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0]) if row else 0

    def _upgrade(self) -> None:
        """Create the schema, or bring an older file up to date once, in one transaction: a
        first-format file gets arrival numbers and its indexes on disk (the tombstones of
        deleted documents go), and every older file gets checksums over each row's identity
        (format 3). A file of the current format costs one read of its format number here.

        Raises:
            StorageError: the file's format is newer than this version knows (or damaged).
        """
        self._conn.executescript(_SCHEMA)
        if self._known_format() >= _FORMAT:
            self._set_checked(_FORMAT)
            self._trim_partial_indexes()
            self._rekey_indexes()
            return
        with self._upgrading():
            found = self._known_format()
            if found < _FORMAT:  # another process may have upgraded meanwhile
                # Checksums first: the builds below write checksummed rows. Each is taken once,
                # by the upgrade to its format: taken again, it would hide damage found since.
                if found < _IDENTITY_FORMAT:
                    self._checksum_catalog()
                self._checksum_entries()
                if found < _ARRIVAL_FORMAT:
                    self._number_arrivals()
                if found < _IDENTITY_FORMAT:
                    self._checksum_identities()
                self._set_checked(_FORMAT)
                if found < _ARRIVAL_FORMAT:
                    self._conn.execute("DELETE FROM entries")
                    self._conn.execute("DELETE FROM built_indexes")
                    for row in self._catalog_documents():
                        index = _IndexSpec.from_catalog(row)
                        if index is not None:
                            _Writer(self, index.collection, 0).build(index)
                    self._conn.execute(_PARTIAL_ENTRIES_MARK)  # built just now, as they trim
                self._conn.execute("UPDATE meta SET value = ? WHERE name = 'format'", (_FORMAT,))
                self._catalog_changed()
        self._set_checked(_FORMAT)
        self._trim_partial_indexes()  # a second-format file may not have had its turn yet
        self._rekey_indexes()

    def _set_checked(self, found: int) -> None:
        """Read the checksums a file of format ``found`` has (older ones lack some columns)."""
        self.identity_checked = found >= _IDENTITY_FORMAT
        self.id_crc, self.joined_id_crc = (
            ("id_crc", "d.id_crc") if self.identity_checked else ("NULL", "NULL")
        )
        self.entry_crc, self.joined_entry_crc = (
            ("crc", "e.crc") if found >= _ENTRY_FORMAT else ("NULL", "NULL")
        )

    def _known_format(self) -> int:
        """The file's format number.

        Raises:
            StorageError: one newer than this version knows (a newer version wrote the file,
                or the number itself is damaged).
        """
        found = self._format()
        if found > _FORMAT:
            raise StorageError(
                f"the embedded database {self.path} has format {found}, newer than this "
                f"version of cosmos-mongo knows ({_FORMAT}); it was left untouched. Upgrade "
                "cosmos-mongo to open it (or, if no newer version wrote it, the file is "
                "damaged: restore it from a backup).",
                reason="damaged",
            )
        return found

    def _number_arrivals(self) -> None:
        """First format to second: the arrival and checksum columns, arrival numbers in the
        order of the rows' last writes, and no tombstones."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(documents)")}
        for column in ("body_crc", "arrival"):
            if column not in columns:
                self._conn.execute(f"ALTER TABLE documents ADD COLUMN {column} INTEGER")
        # Documents by arrival, for index entries; the change log by seq is not needed.
        self._conn.execute(
            "CREATE INDEX IF NOT EXISTS documents_arrival ON documents (collection, arrival)"
        )
        self._conn.execute("DROP INDEX IF EXISTS documents_seq")
        self._conn.execute("DELETE FROM documents WHERE body IS NULL")
        keys = self._conn.execute(
            "SELECT collection, key FROM documents ORDER BY seq, key"
        ).fetchall()
        self._conn.executemany(
            "UPDATE documents SET arrival = ? WHERE collection = ? AND key = ?",
            [(number, c, k) for number, (c, k) in enumerate(keys, 1)],
        )
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'arrival'", (len(keys),))

    def _checksum_identities(self) -> None:
        """Every row's identity checksum (format 3), a batch of rows at a time; the body's
        stays as it is, so damage found before stays damage."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(documents)")}
        if "id_crc" not in columns:
            self._conn.execute("ALTER TABLE documents ADD COLUMN id_crc INTEGER")
        after: tuple[str, bytes] = ("", b"")
        while True:
            rows = self._conn.execute(
                "SELECT collection, key, arrival FROM documents WHERE (collection, key) > (?, ?) "
                "ORDER BY collection, key LIMIT ?",
                (*after, _BATCH),
            ).fetchall()
            if not rows:
                return
            self._conn.executemany(
                "UPDATE documents SET id_crc = ? WHERE collection = ? AND key = ?",
                [(_identity_crc(c, k, a or 0), c, k) for c, k, a in rows],
            )
            after = (rows[-1][0], rows[-1][1])

    def _checksum_entries(self) -> None:
        """Every index entry's checksum (format 4), taken over the entry as it is (the full
        ``verify`` still re-derives entries from their documents). The table is written
        again in key order rather than updated in place: rows grown in place split their
        pages, and reads of a range then visit pages scattered over the file."""
        self._conn.create_function("cosmos_entry_crc", 3, _entry_crc, deterministic=True)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(entries)")}
        if "crc" in columns:  # made with it: only what a third-format process wrote since
            self._conn.execute(
                "UPDATE entries SET crc = cosmos_entry_crc(ix, key, arrival) WHERE crc IS NULL"
            )
            return
        self._conn.execute("ALTER TABLE entries RENAME TO entries_before_checksums")
        self._conn.execute(_ENTRIES_TABLE)  # (executescript would commit the upgrade so far)
        self._conn.execute(
            "INSERT INTO entries (ix, key, arrival, crc) "
            "SELECT ix, key, arrival, cosmos_entry_crc(ix, key, arrival) "
            "FROM entries_before_checksums ORDER BY ix, key, arrival"
        )
        self._conn.execute("DROP TABLE entries_before_checksums")

    def _checksum_catalog(self) -> None:
        """Every ``built_indexes`` row's checksum (format 3)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(built_indexes)")}
        if "crc" not in columns:
            self._conn.execute("ALTER TABLE built_indexes ADD COLUMN crc INTEGER")
        rows = self._conn.execute(
            "SELECT ix, collection, name, ordered FROM built_indexes"
        ).fetchall()
        self._conn.executemany(
            "UPDATE built_indexes SET crc = ? WHERE ix = ?",
            [(_catalog_crc(*row), row[0]) for row in rows],
        )

    def _trim_partial_indexes(self) -> None:
        """Once per file: rebuild each partial index to hold only its documents (versions
        before 0.4's last change kept an entry for every document in them)."""
        if self._partial_entries_marked():
            return
        with self._upgrading():
            if not self._partial_entries_marked():  # another process may have done it
                for row in self._catalog_documents():
                    index = _IndexSpec.from_catalog(row)
                    if index is None or index.partial is None:
                        continue
                    _unbuild(self._conn, index.collection, index.name)
                    _Writer(self, index.collection, 0).build(index)
                self._conn.execute(_PARTIAL_ENTRIES_MARK)
                self._catalog_changed()

    def _rekey_indexes(self) -> None:
        """Once per file: rebuild the indexes whose keys this version derives differently
        from earlier ones (``_keyed_differently``). The others keep their entries, so a
        large store's first write open rebuilds nothing it need not. Duplicates a unique
        index holds are kept: it held them before."""
        if self._conn.execute("SELECT 1 FROM meta WHERE name = 'index_keys'").fetchone():
            return
        with self._upgrading():
            if not self._conn.execute("SELECT 1 FROM meta WHERE name = 'index_keys'").fetchone():
                ordered = {
                    (collection, name): bool(flag)
                    for collection, name, flag in self._conn.execute(
                        "SELECT collection, name, ordered FROM built_indexes"
                    )
                }
                for row in self._catalog_documents():
                    index = _IndexSpec.from_catalog(row)
                    built = None if index is None else ordered.get((index.collection, index.name))
                    if index is not None and built is not None and _keyed_differently(index, built):
                        _unbuild(self._conn, index.collection, index.name)
                        _Writer(self, index.collection, 0).build(index, refuse_duplicates=False)
                self._conn.execute("INSERT INTO meta (name, value) VALUES ('index_keys', 2)")
                self._catalog_changed()

    @contextlib.contextmanager
    def _upgrading(self) -> Iterator[None]:
        """One exclusive transaction for a change to the file's format: all of it or none."""
        with self._exclusive():
            yield
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Begin an exclusive transaction, which the block ends; if the block fails, roll it
        back and forget the catalog (the block may have read or changed it)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._catalog_version = None
            raise

    def _partial_entries_marked(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM meta WHERE name = 'partial_entries'").fetchone()
        return row is not None

    # -- the catalog of indexes ---------------------------------------------------------------

    def _catalog_documents(self) -> list[dict[str, Any]]:
        """The index catalog's documents.

        Raises:
            StorageError: one is damaged (reason ``"damaged"``): without it no index of its
                collection could be kept in step, so nothing is served.
        """
        rows = self._conn.execute(
            f"SELECT key, {self.arrival}, body, body_crc, {self.id_crc} FROM documents "
            "WHERE collection = ? AND body IS NOT NULL",
            (_INDEX_CATALOG,),
        ).fetchall()
        found = []
        for key, arrival, body, crc, id_crc in rows:
            try:
                found.append(_checked_document(_INDEX_CATALOG, key, arrival, body, crc, id_crc))
            except _Damaged as exc:
                self.damaged[(_INDEX_CATALOG, exc.label)] = str(exc)
                raise _damage_error(
                    self.path, f"the index catalog's {exc.label}", str(exc)
                ) from None
        return found

    def _built_indexes(self) -> dict[tuple[str, str], tuple[int, bool]]:
        """(ix, ordered) of every built index, by (collection, name).

        Raises:
            StorageError: a row fails its checksum (reason ``"damaged"``).
        """
        if self._format() < _ARRIVAL_FORMAT:
            return {}
        if not self.identity_checked:  # a second-format file opened read-only: no checksums
            rows = self._conn.execute("SELECT ix, collection, name, ordered, 0 FROM built_indexes")
        else:
            rows = self._conn.execute(
                "SELECT ix, collection, name, ordered, crc FROM built_indexes"
            )
        built = {}
        for ix, collection, name, ordered, crc in rows:
            if self.identity_checked and not _catalog_row_intact(
                ix, collection, name, ordered, crc
            ):
                raise _damage_error(
                    self.path,
                    f"the row of index number {ix} ({collection}.{name})",
                    "checksum mismatch: the stored bytes changed on disk",
                )
            built[(collection, name)] = (ix, bool(ordered))
        return built

    def _refresh_catalog(self) -> None:
        """Reload the index catalog if any process changed it since this one last looked.
        The first read of an operation's transaction: the catalog and the entries it then
        reads come from the same snapshot."""
        (changes,) = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'catalog'"
        ).fetchone() or (0,)
        if changes == self._catalog_version:
            return
        self._catalog_rows = sorted(self._catalog_documents(), key=lambda row: str(row["_id"]))
        built = self._built_indexes()
        catalog: dict[str, list[tuple[_IndexSpec, bool]]] = {}
        for row in self._catalog_rows:
            index = _IndexSpec.from_catalog(row)
            if index is not None and (index.collection, index.name) in built:
                ix, ordered = built[(index.collection, index.name)]
                catalog.setdefault(index.collection, []).append(
                    (dataclasses.replace(index, ix=ix), ordered)
                )
        self._catalog = catalog
        self._by_lead = {name: _grouped_by_lead(indexes) for name, indexes in catalog.items()}
        self._catalog_version = changes

    def _catalog_changed(self) -> None:
        self._conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'catalog'")
        self._catalog_version = None  # reread after this write

    def catalog(self, collection: str) -> list[tuple[_IndexSpec, bool]]:
        """The indexes whose entries are complete, each with whether it serves sorts."""
        return self._catalog.get(collection, [])

    def catalog_by_lead(self, collection: str) -> dict[str, list[tuple[_IndexSpec, bool]]]:
        """The same, by the path of each index's first field."""
        return self._by_lead.get(collection, {})

    def index_rows(self, collection: str) -> list[dict[str, Any]]:
        return [row for row in self._catalog_rows if row["collection"] == collection]

    # -- transactions -------------------------------------------------------------------------

    def read(self, operation: Callable[[_Reader], T], *, one_statement: bool = False) -> T:
        """Run ``operation`` in one read transaction: one consistent view of the file.
        ``one_statement``: the operation makes a single SELECT that needs no index (a look-up
        by ``_id``), which SQLite already answers from one snapshot."""
        with self._lock, self._sqlite_errors():
            if one_statement:
                return operation(_Reader(self))
            if self._conn.in_transaction:  # a unit of work's: it already sees one snapshot
                self._refresh_catalog()
                return operation(_Reader(self))
            self._conn.execute("BEGIN")
            try:
                self._refresh_catalog()
                return operation(_Reader(self))
            finally:
                self._conn.execute("COMMIT")

    def by_key(self, collection: str, key: bytes) -> Any:
        """The document with this key, or None: :meth:`read` of a look-up by ``_id``, without
        its generic steps (one SELECT, which SQLite answers from one snapshot, needs neither a
        transaction nor the index catalog). The commonest read of all: ``get_prompt``.

        Raises:
            StorageError: as :meth:`_Reader.fetch_one`, or SQLite failed.
        """
        with self._lock:
            reader = self._key_reader
            if reader is None:  # made once the connection is open, then kept
                reader = self._key_reader = _Reader(self)
            try:
                return reader.fetch_one(collection, key)
            except sqlite3.Error:
                with self._errors:  # the one error boundary, entered only when there is an error
                    raise

    def write(self, collection: str, operation: Callable[[_Writer], T]) -> T:
        """Run ``operation`` in one durable write transaction; nothing of it stays if it fails.
        An error the operation defers (a bulk insert's duplicates) is raised after commit."""
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            grouped = self._unit_depth > 0
            joined = grouped and self._conn.in_transaction
            if not joined:
                self._conn.execute("BEGIN IMMEDIATE")
            else:  # undone alone if it fails; committed with the unit
                self._conn.execute("SAVEPOINT write")
            try:
                # A unit holds the write lock from its first write: no other process can
                # change the catalog meanwhile, and one stamp serves all its writes.
                if not joined or self._catalog_version is None:
                    self._refresh_catalog()
                if not joined or self._unit_seq is None:
                    (self._unit_seq,) = self._conn.execute(
                        "UPDATE meta SET value = value + 1 WHERE name = 'seq' RETURNING value"
                    ).fetchone()
                writer = _Writer(self, collection, self._unit_seq)
                result = operation(writer)
                if joined:
                    self._conn.execute("RELEASE write")
                elif not grouped:
                    self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if joined:
                        self._conn.execute("ROLLBACK TO write")
                        self._conn.execute("RELEASE write")
                    else:  # the transaction began with this write: nothing else is in it
                        self._conn.execute("ROLLBACK")
                self._catalog_version = self._unit_seq = None
                raise
            if not grouped:
                self._unit_seq = None
                self.stats.write_transactions += 1
        if writer.deferred is not None:
            raise writer.deferred
        return result

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """The writes made inside share one durable transaction, committed on the way out, so
        a workflow's consecutive writes cost one ``fsync`` instead of one each. Each write still
        stands or fails alone, and the unit commits also when an exception leaves it, as if
        each write had committed: only a crash before the end loses the unit, whole, and other
        processes see all of it or none. Other threads of this process wait for it to end.

        Raises:
            StorageError: the commit failed (nothing of the unit was written).
        """
        with self._lock:
            self._unit_depth += 1
            try:
                yield
            finally:
                self._unit_depth -= 1
                if self._unit_depth == 0 and self._conn.in_transaction:
                    self._end_unit()

    def _end_unit(self) -> None:
        self._unit_seq = None
        with self._sqlite_errors():
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                self._catalog_version = None
                raise
            self.stats.write_transactions += 1

    def _sqlite_errors(self) -> _SQLiteErrors:
        return self._errors

    def change_stamp(self) -> tuple[int, int]:
        """A value that changes whenever a write commits: SQLite's ``data_version`` (moved by
        other connections' commits, other processes' included) and this connection's own
        commit count (which ``data_version`` does not see). Reads no page: cheap to poll.

        Raises:
            StorageError: SQLite failed.
        """
        with self._lock, self._sqlite_errors():
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            return int(version), self.stats.write_transactions

    # -- maintenance ---------------------------------------------------------------------------

    def damaged_documents(self, *, full: bool = True) -> list[str]:
        """Everything in the file that fails a check, one line each (a row as "collection
        id: why"). Reads the whole file in one snapshot (``full=False``: all but the last
        check, which decodes every document and costs the most):

        * SQLite's own check of the file's structure and of its indexes against the rows
          (``PRAGMA integrity_check``): a changed key, collection or arrival byte leaves a
          row and its index entries disagreeing;
        * every row's checksums (of its identity, format 3, and of its body);
        * arrival numbers: one document each, none past the counter new ones come from;
        * the index catalog: its documents and the checksummed rows that say which indexes
          are built, each with the other;
        * every index's entries, re-derived from its documents (compared as an
          order-independent sum, so memory stays flat).

        Raises:
            StorageError: SQLite failed.
        """
        with self._lock, self._sqlite_errors():
            if self._conn.in_transaction:  # a unit of work's: it already sees one snapshot
                return self._damage(full)
            self._conn.execute("BEGIN")
            try:
                return self._damage(full)
            finally:
                self._conn.execute("COMMIT")

    def _damage(self, full: bool) -> list[str]:
        found: list[str] = []
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA integrity_check(50)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            found += [f"file: {problem}" for problem in problems]
        try:
            rows, damaged = self._damaged_rows()
        except sqlite3.DatabaseError as exc:
            return [*found, f"file: the rows cannot be read ({exc})"]
        self.damaged = rows
        found += [f"{c} {label}: {why}" for (c, label), why in sorted(rows.items())]
        if self.entry_crc != "NULL":
            try:
                found += self._damaged_entries()
            except sqlite3.DatabaseError as exc:
                found.append(f"file: the index entries cannot be read ({exc})")
        if full and self._format() >= _ARRIVAL_FORMAT:
            try:
                found += self._damaged_indexes(damaged)
            except sqlite3.DatabaseError as exc:
                found.append(f"file: the indexes cannot be read ({exc})")
        return found

    def _damaged_rows(self) -> tuple[dict[tuple[str, str], str], set[tuple[str, int]]]:
        """Rows failing their checksum (or decoding) by (collection, label), and the
        (collection, arrival) of those; a whole-table pass, not through any index."""
        found: dict[tuple[str, str], str] = {}
        damaged: set[tuple[str, int]] = set()
        seen: set[tuple[str, int]] = set()
        greatest = 0
        rows = self._conn.execute(
            f"SELECT collection, key, {self.arrival}, body, body_crc, {self.id_crc} "
            "FROM documents NOT INDEXED WHERE body IS NOT NULL"
        )
        for collection, key, arrival, body, crc, id_crc in rows:
            if (
                crc is None
                or not _stored_types(collection, key, arrival, body)
                or zlib.crc32(body) != crc
                or (id_crc is not None and _identity_crc(collection, key, arrival or 0) != id_crc)
            ):
                try:  # says why (decoded only where no checksum can vouch for the body)
                    _checked_document(collection, key, arrival, body, crc, id_crc)
                except _Damaged as exc:
                    found[(collection, exc.label)] = str(exc)
                    damaged.add((collection, arrival or 0))
                    continue
            if self.arrival == "arrival":
                if (collection, arrival) in seen or not isinstance(arrival, int):
                    found[(collection, _key_label(key))] = (
                        f"its arrival number {arrival} is not its own (another document of "
                        "the collection has it, or it is missing)"
                    )
                    damaged.add((collection, arrival or 0))
                seen.add((collection, arrival))
                greatest = max(greatest, arrival if isinstance(arrival, int) else 0)
        if self.arrival == "arrival":
            (counter,) = self._conn.execute(
                "SELECT value FROM meta WHERE name = 'arrival'"
            ).fetchone() or (0,)
            if counter < greatest:
                found[("meta", "arrival")] = (
                    f"the counter of arrival numbers ({counter}) is behind the greatest one "
                    f"in use ({greatest}): new documents would reuse numbers"
                )
        return found, damaged

    def _damaged_entries(self) -> list[str]:
        """The indexes holding entries that fail their checksum (format 4), a whole-table
        pass: a query served by such an entry stops with an error until the index is rebuilt."""
        failing: dict[Any, int] = {}
        rows = self._conn.execute(
            "SELECT ix, key, arrival, crc FROM entries NOT INDEXED WHERE crc IS NOT NULL"
        )
        while batch := rows.fetchmany(_BATCH):
            for ix, _, _, _ in _broken_entries(batch):
                failing[ix] = failing.get(ix, 0) + 1
        names = {
            ix: f"{collection}.{name}"
            for ix, collection, name in self._conn.execute(
                "SELECT ix, collection, name FROM built_indexes"
            )
        }
        return [
            f"index {names.get(ix, f'number {ix}')}: "
            + (f"{count} entries fail" if count > 1 else "an entry fails")
            + " its checksum (the stored bytes changed on disk)"
            for ix, count in sorted(failing.items(), key=lambda item: str(item[0]))
        ]

    def _damaged_indexes(self, damaged: set[tuple[str, int]]) -> list[str]:
        """The index catalog's rows against each other, and every index's entries against
        what its documents give (damaged documents' entries cannot be re-derived: left out)."""
        found: list[str] = []
        specs = {(i.collection, i.name): i for i in self._intact_catalog(damaged)}
        built: dict[int, tuple[str, str, bool]] = {}
        columns = "ix, collection, name, ordered, " + ("crc" if self.identity_checked else "0")
        for ix, collection, name, ordered, crc in self._conn.execute(
            f"SELECT {columns} FROM built_indexes"
        ).fetchall():
            label = f"index {collection}.{name} (number {ix})"
            if self.identity_checked and not _catalog_row_intact(
                ix, collection, name, ordered, crc
            ):
                found.append(f"{label}: its catalog row fails its checksum")
            elif (collection, name) not in specs:
                found.append(f"{label}: built, but not in the index catalog")
            else:
                built[ix] = (collection, name, bool(ordered))
        held = {(c, n) for c, n, _ in built.values()}
        for collection, name in sorted(set(specs) - held):
            if not any(line.startswith(f"index {collection}.{name} ") for line in found):
                found.append(f"index {collection}.{name}: in the catalog, but not built")
        for ix, count in self._conn.execute(
            "SELECT ix, count(*) FROM entries GROUP BY ix"
        ).fetchall():
            if ix not in built and not any(f"(number {ix})" in line for line in found):
                found.append(f"index number {ix}: {count} entries of an index that is not built")
        by_collection: dict[str, list[tuple[int, _IndexSpec, bool]]] = {}
        for ix, (collection, name, ordered) in sorted(built.items()):
            by_collection.setdefault(collection, []).append(
                (ix, specs[(collection, name)], ordered)
            )
        for collection, indexes in sorted(by_collection.items()):
            found += self._entries_checked(collection, indexes, damaged)
        return found

    def _entries_checked(
        self,
        collection: str,
        indexes: list[tuple[int, _IndexSpec, bool]],
        damaged: set[tuple[str, int]],
    ) -> list[str]:
        """The indexes of one collection whose stored entries differ from the documents'
        (as a count and an order-independent sum of hashes, each side), or that serve sorts
        although a document's keys have no total order."""
        expected = {ix: [0, 0] for ix, _, _ in indexes}
        keeps_order = {ix: True for ix, _, _ in indexes}
        # NOT INDEXED: the table itself, as an index of it may be what is damaged.
        rows = self._conn.execute(
            "SELECT arrival, body FROM documents NOT INDEXED WHERE collection = ? "
            "AND body IS NOT NULL",
            (collection,),
        )
        while batch := rows.fetchmany(_BATCH):
            for arrival, body in batch:
                if (collection, arrival) in damaged:
                    continue
                document = _intact(body)
                fields = _FieldKeys(document)
                for ix, index, _ in indexes:
                    if not index.holds(document):
                        continue
                    keys, ordered = index.keys_of(document, fields)
                    keeps_order[ix] = keeps_order[ix] and ordered
                    tally = expected[ix]
                    for entry in keys:
                        tally[0] += 1
                        tally[1] = (tally[1] + hash((entry, arrival))) & _HASH_MASK
        found = []
        left_out = {arrival for c, arrival in damaged if c == collection}
        for ix, index, ordered in indexes:
            count = total = 0
            for entry, arrival in self._conn.execute(
                "SELECT key, arrival FROM entries WHERE ix = ?", (ix,)
            ):
                if arrival in left_out:
                    continue
                count += 1
                total = (total + hash((entry, arrival))) & _HASH_MASK
            label = f"index {collection}.{index.name}"
            if [count, total] != expected[ix]:
                found.append(
                    f"{label}: its entries differ from what its documents give ({count} "
                    f"stored, {expected[ix][0]} expected)"
                )
            if ordered and not keeps_order[ix]:
                found.append(f"{label}: marked as serving sorts, but it holds arrays or objects")
        return found

    def rebuild_indexes(self) -> IndexRebuild:
        """Re-derive every index entry from the documents, in one durable transaction, and
        put right the rows that say which indexes are built. Only what differs is written,
        so a second run changes nothing. A damaged document's entries are kept as they are
        (nothing can re-derive them), and a damaged catalog document's index is left alone:
        both are reported in ``not_rebuilt`` (they come back only from a backup).

        Raises:
            ReadOnlyError: the store is open read-only.
            StorageError: SQLite failed (nothing was changed).
        """
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            with self._exclusive():
                report = self._rebuilt()
                if report.changes:
                    self._catalog_changed()
                    self._conn.execute("COMMIT")
                else:  # all in order: not a byte written
                    self._conn.execute("ROLLBACK")
            self.stats.write_transactions += 1
            return report

    def _rebuilt(self) -> IndexRebuild:
        """The rebuild, inside its transaction. The entries are compared with what the
        documents give; if anything differs, the table is emptied whole and written again
        (a delete of one entry could miss it in a b-tree whose order a damaged byte broke)."""
        rows, damaged = self._damaged_rows()
        not_rebuilt = [f"{c} {label}: {why}" for (c, label), why in sorted(rows.items())]
        catalog_fixed = self._sqlite_indexes_rebuilt(documents_intact=not rows)
        specs = self._intact_catalog(damaged)
        kept = {(index.collection, index.name) for index in specs}
        # A damaged catalog document hides which index it defined: its rows stay.
        catalog_whole = not any(c == _INDEX_CATALOG for c, _ in damaged)
        by_name: dict[tuple[str, str], tuple[int, int]] = {}
        for ix, collection, name, ordered, crc in self._conn.execute(
            "SELECT ix, collection, name, ordered, crc FROM built_indexes"
        ).fetchall():
            intact = _catalog_row_intact(ix, collection, name, ordered, crc)
            if intact and (collection, name) in kept:
                by_name[(collection, name)] = (ix, ordered)
            elif intact and not catalog_whole:
                by_name[(collection, name)] = (ix, ordered)  # perhaps the damaged one's
            else:
                self._conn.execute("DELETE FROM built_indexes WHERE ix = ?", (ix,))
                catalog_fixed.append(f"{collection}.{name} (number {ix}): row removed")
        present, broken = self._stored_entries()
        wanted: dict[int, set[tuple[bytes, int]]] = {}
        rebuilt: list[IndexRebuilt] = []
        for index in sorted(specs, key=lambda spec: (spec.collection, spec.name)):
            held = by_name.get((index.collection, index.name))
            if held is None:
                (ix,) = self._conn.execute(
                    "INSERT INTO built_indexes (collection, name, ordered) VALUES (?, ?, 1) "
                    "RETURNING ix",
                    (index.collection, index.name),
                ).fetchone()
                stored_order = -1  # always written below
                catalog_fixed.append(f"{index.collection}.{index.name}: row made (number {ix})")
            else:
                ix, stored_order = held
            expected: set[tuple[bytes, int]] = set()
            ordered = True
            for stored in self._all_rows(index.collection, damaged):
                if index.holds(stored.document):
                    keys, keeps = index.keys_of(stored.document)
                    ordered = ordered and keeps
                    expected.update((entry, stored.arrival) for entry in keys)
            left_out = {arrival for c, arrival in damaged if c == index.collection}
            stored_entries = present.get(ix, set())
            # A damaged document's entries cannot be re-derived: those stored are kept.
            expected |= {(e, a) for e, a in stored_entries if a in left_out}
            wanted[ix] = expected
            if int(ordered) != stored_order:
                _mark_built(self._conn, ix, index.collection, index.name, ordered)
            rebuilt.append(
                IndexRebuilt(
                    f"{index.collection}.{index.name}",
                    len(expected),
                    removed=len(stored_entries - expected) + broken.get(ix, 0),
                    added=len(expected - stored_entries),
                    order_changed=stored_order >= 0 and int(ordered) != stored_order,
                )
            )
        for ix, _ in by_name.values():
            wanted.setdefault(ix, present.get(ix, set()))  # a damaged catalog's: kept as is
        stray = sum(len(entries) for ix, entries in present.items() if ix not in wanted)
        stray += sum(count for ix, count in broken.items() if ix not in wanted)
        if (
            stray
            or broken
            or any(present.get(ix, set()) != entries for ix, entries in wanted.items())
        ):
            self._conn.execute("DELETE FROM entries")  # whole: no b-tree search involved
            self._conn.executemany(
                "INSERT INTO entries (ix, key, arrival, crc) VALUES (?, ?, ?, ?)",
                sorted(
                    (ix, e, a, _entry_crc(ix, e, a))
                    for ix, entries in wanted.items()
                    for e, a in entries
                ),
            )
        return IndexRebuild(rebuilt, catalog_fixed, stray, not_rebuilt)

    def _stored_entries(self) -> tuple[dict[int, set[tuple[bytes, int]]], dict[int, int]]:
        """The stored entries that pass their checksum, by index number, and how many fail
        it, by the index number they hold (read from the table itself, not through a b-tree
        search a damaged byte could mislead)."""
        stored = self._conn.execute("SELECT ix, key, arrival, crc FROM entries NOT INDEXED")
        rows = stored.fetchall()
        failing = set(_broken_entries(rows))
        present: dict[int, set[tuple[bytes, int]]] = {}
        broken: dict[int, int] = {}
        for row in rows:
            ix, entry, arrival, _ = row
            if row in failing:
                broken[ix] = broken.get(ix, 0) + 1
            else:
                present.setdefault(ix, set()).add((entry, arrival))
        return present, broken

    def _sqlite_indexes_rebuilt(self, *, documents_intact: bool) -> list[str]:
        """SQLite's own indexes of the tables are derived data too (those of the documents
        only while every row is intact): rebuilt where its check finds them wrong."""
        problems = " ".join(row[0] for row in self._conn.execute("PRAGMA integrity_check"))
        rebuilt = []
        for table, indexes in (
            ("built_indexes", ("sqlite_autoindex_built_indexes_1",)),
            ("documents", ("documents_id", "documents_arrival") if documents_intact else ()),
        ):
            if any(f"index {index}" in problems for index in indexes):
                self._conn.execute(f"REINDEX {table}")
                rebuilt.append(f"SQLite's indexes of {table} rebuilt")
        return rebuilt

    def _intact_catalog(self, damaged: set[tuple[str, int]]) -> list[_IndexSpec]:
        """The indexes the intact catalog documents define (not text indexes)."""
        specs = []
        for arrival, body in self._conn.execute(
            "SELECT arrival, body FROM documents WHERE collection = ? AND body IS NOT NULL",
            (_INDEX_CATALOG,),
        ).fetchall():
            if (_INDEX_CATALOG, arrival or 0) not in damaged:
                index = _IndexSpec.from_catalog(_intact(body))
                if index is not None:
                    specs.append(index)
        return specs

    def _all_rows(self, collection: str, damaged: set[tuple[str, int]]) -> Iterator[_Stored]:
        """The collection's intact documents, read from the table itself (not through an
        index that may be damaged), a batch at a time."""
        rows = self._conn.execute(
            "SELECT key, arrival, body FROM documents NOT INDEXED WHERE collection = ? "
            "AND body IS NOT NULL",
            (collection,),
        )
        while batch := rows.fetchmany(_BATCH):
            for key, arrival, body in batch:
                if (collection, arrival) not in damaged:
                    yield _Stored(key, arrival, _intact(body))

    def backup(self, destination: Path) -> Path:
        """A consistent copy of the file through SQLite's online backup, safe while other
        processes hold and write the store. Refuses to overwrite an existing file.

        The copy is written to a hidden temporary file beside the target (mode 0600 from its
        first byte, ``.NAME.*.partial``: never taken for a store), flushed to disk, then
        linked into place and the directory flushed: a killed backup leaves no target at
        all, or a complete one. A temporary left by a killed backup is not in the way of the
        next one (it may be deleted).

        Raises InvalidInputError when the destination exists or its directory does not (or
        cannot be written), and StorageError naming the destination when the copy cannot be
        written or the store cannot be read."""
        target = Path(destination)
        try:
            if target.is_dir():
                target = target / self.path.name
            exists = target.exists()
            directory = target.parent.is_dir()
        except OSError as exc:  # a name too long for the file system, say
            raise InvalidInputError("destination", f"{target}: {exc.strerror or exc}") from exc
        if exists:
            raise InvalidInputError("destination", f"{target} exists; choose a new file")
        if not directory:
            raise InvalidInputError(
                "destination", f"{target}: the directory {target.parent} does not exist"
            )
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise InvalidInputError(
                "destination", f"{target}: the directory {target.parent} is not writable"
            )
        partial = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.partial")
        try:
            try:
                os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                copy = sqlite3.connect(partial)
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"cannot create the backup {target}: {exc}") from exc
            try:
                # No journal beside the copy: it is not a store until it is linked into place.
                copy.execute("PRAGMA journal_mode=OFF")
                with self._lock:
                    self._conn.backup(copy)
            except sqlite3.Error as exc:
                raise StorageError(
                    f"cannot write the backup {target} (from the embedded database "
                    f"{self.path}): {exc}"
                ) from exc
            finally:
                copy.close()
            try:
                _fsync_path(partial)
                _publish(partial, target)
                _fsync_path(target.parent)
            except FileExistsError as exc:
                raise InvalidInputError(
                    "destination", f"{target} exists; choose a new file"
                ) from exc
            except OSError as exc:
                raise StorageError(f"cannot write the backup {target}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        return target

    def compact(self) -> tuple[int, int]:
        """Rewrite the file without its free pages (SQLite ``VACUUM``), then empty the WAL.
        Other processes may hold the store; it waits for their writes. Returns the bytes on
        disk (file and WAL) before and after."""
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            before = self._bytes_on_disk()
            self._conn.execute("VACUUM")
            # VACUUM writes the new file into the WAL; copying it back and emptying the WAL
            # needs a moment with no writer, which a busy store gives between its writes.
            deadline = time.monotonic() + _CHECKPOINT_SECONDS
            while True:
                (busy, _, _) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            return before, self._bytes_on_disk()

    def _bytes_on_disk(self) -> int:
        paths = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(p.stat().st_size for p in paths if p.exists())

    def close(self) -> None:
        """Close the file, first copying what the -wal holds into it (without waiting for
        other processes' readers): a -wal deleted after a clean close loses nothing."""
        with self._lock:
            if not self.read_only:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._conn.close()
