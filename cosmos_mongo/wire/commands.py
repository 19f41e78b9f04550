"""The commands ``cosmos-mongo serve`` answers, each executed by the embedded engine with the
library's read semantics (:class:`~cosmos_mongo.embedded.EmbeddedCollection`).

Every database of the data dir (a ``<name>.sqlite3`` file) is served; one that has no file
reads as empty, and, with ``--writable``, the first write makes its file. Databases are opened
read-only unless the server is writable, so a read-only server cannot change the store.

An unknown command is answered with MongoDB's ``CommandNotFound`` (59); every other failure
with ``ok: 0`` and the error, never a dropped connection.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeGuard

import bson
from bson import ObjectId
from bson.int64 import Int64
from mongomock import aggregate as _aggregate_module
from mongomock import filtering as _filtering
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from cosmos_mongo.embedded import (
    EmbeddedCollection,
    EmbeddedDatabase,
    check_database_name,
    open_embedded,
)
from cosmos_mongo.errors import CosmosMongoError
from cosmos_mongo.wire.cursors import CursorError, Cursors
from cosmos_mongo.wire.protocol import MAX_BSON_BYTES, MAX_MESSAGE_BYTES

log = logging.getLogger("cosmos_mongo.wire")
# mongomock's matching, as the engine's (it has no type hints).
_filter_applies: Callable[[Mapping[str, Any], Any], bool] = _filtering.filter_applies
_aggregation: Any = _aggregate_module

# What the server says it is: mongod 7.0's wire version, so current drivers, mongosh 2 and
# Compass connect; buildInfo says which product answers.
SERVER_VERSION: Final = "7.0.0"
MAX_WIRE_VERSION: Final = 21
MAX_WRITE_BATCH: Final = 100_000
_SUFFIX: Final = ".sqlite3"
_WRITES: Final = frozenset(
    {
        "insert",
        "update",
        "delete",
        "findAndModify",
        "findandmodify",
        "createIndexes",
        "dropIndexes",
        "deleteIndexes",
        "create",
        "drop",
        "dropDatabase",
        "renameCollection",
        "collMod",
    }
)
_CODE_NAMES: Final = {
    1: "InternalError",
    2: "BadValue",
    9: "FailedToParse",
    13: "Unauthorized",
    14: "TypeMismatch",
    20: "IllegalOperation",
    22: "InvalidBSON",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    43: "CursorNotFound",
    59: "CommandNotFound",
    66: "ImmutableField",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    115: "CommandNotSupported",
    11000: "DuplicateKey",
}


class CommandError(Exception):
    """A command refused, with MongoDB's ``code`` (its ``codeName`` from the table above)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Client:
    """Who sent a command: its connection's number and address (empty on a Unix socket)."""

    connection_id: int
    peer: str = ""


def error_document(message: str, code: int) -> dict[str, Any]:
    return {
        "ok": 0.0,
        "errmsg": message,
        "code": code,
        "codeName": _CODE_NAMES.get(code, "UnknownError"),
    }


class DataDir:
    """The databases of a data dir, each opened once, on first use, and kept open."""

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path, self.writable = Path(path), writable
        self._open: dict[str, EmbeddedDatabase] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The databases that have a file, by name."""
        found = []
        for file in self.path.glob(f"*{_SUFFIX}"):
            try:
                found.append(check_database_name(file.name.removesuffix(_SUFFIX)))
            except CosmosMongoError:
                continue  # not a database of the store (a copy a person renamed, say)
        return sorted(found)

    def database(self, name: str, *, create: bool = False) -> EmbeddedDatabase | None:
        """The database ``name``; None if it has no file (and ``create`` is false: only a
        writable server's writes create).

        Raises:
            CommandError: ``name`` is not a valid database name for the embedded store.
        """
        with self._lock:
            if name in self._open:
                return self._open[name]
            try:
                check_database_name(name)
            except CosmosMongoError as exc:
                raise CommandError(f"invalid database name {name!r}: {exc}", 73) from exc
            if not (self.path / f"{name}{_SUFFIX}").exists() and not create:
                return None
            opened = open_embedded(self.path, name, read_only=not self.writable)
            self._open[name] = opened
            return opened

    def file_size(self, name: str) -> int:
        try:
            return (self.path / f"{name}{_SUFFIX}").stat().st_size
        except OSError:
            return 0

    def close(self) -> None:
        with self._lock:
            for database in self._open.values():
                database.close()
            self._open.clear()


def _plain_projection(projection: Mapping[str, Any]) -> bool:
    """Whether the engine's find projects this itself: inclusions, exclusions, ``$slice`` and
    ``$elemMatch``; computed fields (``"$path"``, expressions) run as an aggregation."""
    for value in projection.values():
        if isinstance(value, bool | int | float):
            continue
        if isinstance(value, Mapping) and set(value) <= {"$slice", "$elemMatch"}:
            continue
        return False
    return True


def _values_at(document: Any, path: Sequence[str]) -> list[Any]:
    """The values at a dotted path, through arrays, as ``distinct`` reads them."""
    if not path:
        return list(document) if isinstance(document, list) else [document]
    if isinstance(document, list):
        return [value for item in document for value in _values_at(item, path)]
    if isinstance(document, Mapping) and path[0] in document:
        return _values_at(document[path[0]], path[1:])
    return []


class Commands:
    """Answers commands from the data dir's databases; thread-safe (each database's engine
    runs one operation at a time)."""

    def __init__(
        self,
        data: DataDir,
        cursors: Cursors,
        *,
        address: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data, self.cursors, self.address = data, cursors, address
        self._started = clock()
        self._clock = clock
        self.connections: Callable[[], int] = lambda: 0
        self._handlers: dict[str, Callable[[str, dict[str, Any], Client], dict[str, Any]]] = {
            "hello": self._hello,
            "isMaster": self._hello,
            "ismaster": self._hello,
            "ping": lambda *_: {},
            "buildInfo": self._build_info,
            "buildinfo": self._build_info,
            "getParameter": self._get_parameter,
            "getCmdLineOpts": self._cmd_line_opts,
            "hostInfo": self._host_info,
            "connectionStatus": self._connection_status,
            "whatsmyuri": lambda _db, _cmd, client: {"you": client.peer},
            "getLog": self._get_log,
            "serverStatus": self._server_status,
            "listCommands": self._list_commands,
            "endSessions": lambda *_: {},
            "killAllSessions": lambda *_: {},
            "getFreeMonitoringStatus": lambda *_: {"state": "disabled"},
            "listDatabases": self._list_databases,
            "listCollections": self._list_collections,
            "listIndexes": self._list_indexes,
            "find": self._find,
            "getMore": self._get_more,
            "killCursors": self._kill_cursors,
            "aggregate": self._aggregate,
            "count": self._count,
            "distinct": self._distinct,
            "dbStats": self._db_stats,
            "dbstats": self._db_stats,
            "collStats": self._coll_stats,
            "explain": self._explain,
            "insert": self._insert,
            "update": self._update,
            "delete": self._delete,
            "findAndModify": self._find_and_modify,
            "findandmodify": self._find_and_modify,
            "createIndexes": self._create_indexes,
            "dropIndexes": self._drop_indexes,
            "deleteIndexes": self._drop_indexes,
            "drop": self._drop,
            "dropDatabase": self._drop_database,
            "create": self._create,
        }

    # -- dispatch --------------------------------------------------------------------------

    def run(self, database: str, command: Mapping[str, Any], client: Client) -> dict[str, Any]:
        """The reply to ``command`` on ``database``: its answer with ``ok: 1``, or an error
        document with ``ok: 0``. Never raises: the connection must go on whatever a command
        does."""
        if not command:
            return error_document("an empty command", 2)
        name = next(iter(command))
        handler = self._handlers.get(name)
        if handler is None:
            return error_document(f"no such command: '{name}'", 59)
        if name in _WRITES and not self.data.writable:
            return error_document(
                f"cosmos-mongo serve is read-only: '{name}' is refused. Restart it with "
                "--writable to allow writes",
                20,
            )
        try:
            reply = handler(database, dict(command), client)
        except CommandError as exc:
            return error_document(str(exc), exc.code)
        except CursorError as exc:
            return {**error_document(str(exc), exc.code), "codeName": exc.code_name}
        except OperationFailure as exc:
            details = exc.details or {}
            return error_document(str(details.get("errmsg", exc)), exc.code or 2)
        except CosmosMongoError as exc:
            return error_document(str(exc), 1)
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            # What mongomock raises for a query or stage it cannot run.
            return error_document(f"{type(exc).__name__}: {exc}", 2)
        except Exception as exc:  # the server's one catch-all: a reply, never a lost client
            log.exception("command %s failed", name)
            return error_document(f"internal error: {type(exc).__name__}: {exc}", 1)
        return {**reply, "ok": 1.0}

    # -- helpers ---------------------------------------------------------------------------

    def _collection(
        self, database: str, command: Mapping[str, Any], name: str, *, create: bool = False
    ) -> EmbeddedCollection | None:
        collection = command.get(name)
        if not isinstance(collection, str) or not collection:
            raise CommandError(f"'{name}' must name a collection", 73)
        opened = self.data.database(database, create=create)
        return None if opened is None else opened[collection]

    def _cursor_reply(
        self,
        namespace: str,
        documents: list[Any],
        batch_size: Any,
        single_batch: bool = False,
    ) -> dict[str, Any]:
        batch, cursor_id = self.cursors.first_batch(
            namespace,
            documents,
            None if batch_size is None else _count_option(batch_size, "batchSize"),
            single_batch,
        )
        return {"cursor": {"id": Int64(cursor_id), "ns": namespace, "firstBatch": batch}}

    # -- the handshake and its companions --------------------------------------------------

    def _hello(self, _db: str, command: dict[str, Any], client: Client) -> dict[str, Any]:
        legacy = next(iter(command)) != "hello"
        reply: dict[str, Any] = {"ismaster" if legacy else "isWritablePrimary": True}
        if legacy and command.get("helloOk"):
            reply["helloOk"] = True
        return {
            **reply,
            "maxBsonObjectSize": MAX_BSON_BYTES,
            "maxMessageSizeBytes": MAX_MESSAGE_BYTES,
            "maxWriteBatchSize": MAX_WRITE_BATCH,
            "localTime": datetime.now(UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": client.connection_id,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": not self.data.writable,
        }

    def _build_info(self, *_: Any) -> dict[str, Any]:
        from cosmos_mongo import __version__

        return {
            "version": SERVER_VERSION,
            "versionArray": [*map(int, SERVER_VERSION.split(".")), 0],
            "gitVersion": "cosmos-mongo",
            "cosmosMongoVersion": __version__,
            "modules": [],
            "allocator": "system",
            "javascriptEngine": "none",
            "sysInfo": "deprecated",
            "bits": 64,
            "debug": False,
            "maxBsonObjectSize": MAX_BSON_BYTES,
            "storageEngines": ["cosmos-mongo-embedded"],
            "openssl": {"running": "disabled"},
        }

    def _get_parameter(self, _db: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        known: dict[str, Any] = {
            "featureCompatibilityVersion": {"version": SERVER_VERSION.rsplit(".", 1)[0]},
            "authenticationMechanisms": [],
            "enableTestCommands": False,
            "quiet": False,
        }
        asked = command["getParameter"]
        if asked == "*" or (isinstance(asked, Mapping) and asked.get("allParameters")):
            return known
        return {name: value for name, value in known.items() if name in command}

    def _cmd_line_opts(self, *_: Any) -> dict[str, Any]:
        argv = ["cosmos-mongo", "serve", *(["--writable"] if self.data.writable else [])]
        return {"argv": argv, "parsed": {"storage": {"dbPath": str(self.data.path)}}}

    def _host_info(self, *_: Any) -> dict[str, Any]:
        return {
            "system": {
                "currentTime": datetime.now(UTC),
                "hostname": socket.gethostname(),
                "cpuAddrSize": 64,
                "numCores": os.cpu_count() or 1,
                "cpuArch": platform.machine(),
            },
            "os": {"type": platform.system(), "name": platform.platform(), "version": ""},
            "extra": {},
        }

    def _connection_status(self, *_: Any) -> dict[str, Any]:
        # No authentication: nobody is logged in (Compass reads the privileges too).
        return {
            "authInfo": {
                "authenticatedUsers": [],
                "authenticatedUserRoles": [],
                "authenticatedUserPrivileges": [],
            }
        }

    def _get_log(self, _db: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        if command["getLog"] == "*":
            return {"names": ["global", "startupWarnings"]}
        return {"totalLinesWritten": 0, "log": []}

    def _server_status(self, *_: Any) -> dict[str, Any]:
        uptime = self._clock() - self._started
        return {
            "host": self.address,
            "version": SERVER_VERSION,
            "process": "cosmos-mongo serve",
            "pid": os.getpid(),
            "uptime": int(uptime),
            "uptimeMillis": int(uptime * 1000),
            "localTime": datetime.now(UTC),
            "connections": {"current": self.connections()},
            "metrics": {"cursor": {"open": {"total": len(self.cursors)}}},
        }

    def _list_commands(self, *_: Any) -> dict[str, Any]:
        return {
            "commands": {
                name: {"help": "", "requiresAuth": False, "adminOnly": False}
                for name in sorted(self._handlers)
            }
        }

    # -- listing ---------------------------------------------------------------------------

    def _list_databases(self, _db: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        rows = [
            {"name": name, "sizeOnDisk": self.data.file_size(name), "empty": False}
            for name in self.data.names()
        ]
        wanted = command.get("filter") or {}
        rows = [row for row in rows if _filter_applies(wanted, row)]
        if command.get("nameOnly"):
            return {"databases": [{"name": row["name"]} for row in rows]}
        return {"databases": rows, "totalSize": sum(row["sizeOnDisk"] for row in rows)}

    def _list_collections(
        self, database: str, command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        opened = self.data.database(database)
        names = [] if opened is None else opened.list_collection_names()
        rows = [
            {
                "name": name,
                "type": "collection",
                "options": {},
                "info": {"readOnly": not self.data.writable},
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            }
            for name in names
        ]
        wanted = command.get("filter") or {}
        rows = [row for row in rows if _filter_applies(wanted, row)]
        if command.get("nameOnly"):
            rows = [{"name": row["name"], "type": row["type"]} for row in rows]
        cursor = command.get("cursor") or {}
        return self._cursor_reply(f"{database}.$cmd.listCollections", rows, cursor.get("batchSize"))

    def _list_indexes(
        self, database: str, command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        collection = self._collection(database, command, "listIndexes")
        indexes = [] if collection is None else collection.list_indexes()
        namespace = f"{database}.{command['listIndexes']}"
        if not indexes:
            raise CommandError(f"ns does not exist: {namespace}", 26)
        cursor = command.get("cursor") or {}
        return self._cursor_reply(namespace, indexes, cursor.get("batchSize"))

    # -- reading ---------------------------------------------------------------------------

    def _found(self, database: str, command: Mapping[str, Any]) -> list[Any]:
        """What a ``find`` command's options select, in order."""
        collection = self._collection(database, command, "find")
        if collection is None:
            return []
        query = _mapping(command.get("filter"), "filter")
        projection = _mapping(command.get("projection"), "projection") or None
        sort = _sort(command.get("sort"))
        skip = _count_option(command.get("skip"), "skip")
        limit = abs(_number(command.get("limit", 0), "limit"))
        if projection is None or _plain_projection(projection):
            return collection.find(query, projection, sort=sort or None, skip=skip, limit=limit)
        # Computed fields: the same selection, projected by the aggregation's $project.
        pipeline: list[dict[str, Any]] = [{"$match": query}]
        pipeline += [{"$sort": dict(sort)}] if sort else []
        pipeline += [{"$skip": skip}] if skip else []
        pipeline += [{"$limit": limit}] if limit else []
        return collection.aggregate([*pipeline, {"$project": dict(projection)}])

    def _find(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        documents = self._found(database, command)
        single = bool(command.get("singleBatch")) or _number(command.get("limit", 0), "limit") < 0
        return self._cursor_reply(
            f"{database}.{command['find']}", documents, command.get("batchSize"), single
        )

    def _get_more(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        cursor_id = command["getMore"]
        if not isinstance(cursor_id, int):
            raise CommandError("getMore: the cursor id must be a number", 14)
        collection = command.get("collection")
        namespace = f"{database}.{collection}"
        batch, left = self.cursors.next_batch(
            cursor_id, namespace, _count_option(command.get("batchSize"), "batchSize")
        )
        return {"cursor": {"id": Int64(left), "ns": namespace, "nextBatch": batch}}

    def _kill_cursors(self, _db: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        ids = command.get("cursors")
        if not isinstance(ids, list):
            raise CommandError("killCursors: 'cursors' must be an array", 14)
        killed, missing = self.cursors.kill(ids)
        return {
            "cursorsKilled": [Int64(i) for i in killed],
            "cursorsNotFound": [Int64(i) for i in missing],
            "cursorsAlive": [],
            "cursorsUnknown": [],
        }

    def _aggregate(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        pipeline = command.get("pipeline")
        if not isinstance(pipeline, list) or not all(isinstance(s, Mapping) for s in pipeline):
            raise CommandError("aggregate: 'pipeline' must be an array of stages", 14)
        if not isinstance(command["aggregate"], str):
            raise CommandError(
                "aggregate: a database-wide pipeline ({aggregate: 1}) is not "
                "supported: name a collection",
                115,
            )
        for stage in pipeline:
            if {"$out", "$merge"} & set(stage):
                raise CommandError(
                    "aggregate: $out and $merge are not supported by the embedded engine", 115
                )
        if command.get("explain"):
            return self._explain_pipeline(database, command["aggregate"], pipeline)
        if "cursor" not in command:
            raise CommandError(
                "The 'cursor' option is required, except for aggregate with the explain argument",
                9,
            )
        namespace = f"{database}.{command['aggregate']}"
        first = next(iter(pipeline[0]), None) if pipeline else None
        if first in ("$collStats", "$indexStats"):
            documents = self._diagnostics(database, command["aggregate"], pipeline)
        else:
            collection = self._collection(database, command, "aggregate")
            documents = [] if collection is None else collection.aggregate(pipeline)
        cursor = _mapping(command.get("cursor"), "cursor")
        return self._cursor_reply(namespace, documents, cursor.get("batchSize"))

    def _count(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        collection = self._collection(database, command, "count")
        if collection is None:
            return {"n": 0}
        query = _mapping(command.get("query"), "query")
        skip = _count_option(command.get("skip"), "skip")
        limit = abs(_number(command.get("limit", 0), "limit"))
        n = collection.count_documents(query) if query else collection.estimated_document_count()
        n = max(0, n - skip)
        return {"n": min(n, limit) if limit else n}

    def _distinct(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        collection = self._collection(database, command, "distinct")
        key = command.get("key")
        if not isinstance(key, str) or not key:
            raise CommandError("distinct: 'key' must be a field path", 14)
        found = (
            [] if collection is None else collection.find(_mapping(command.get("query"), "query"))
        )
        values: list[Any] = []
        seen: set[bytes] = set()
        for document in found:
            for value in _values_at(document, key.split(".")):
                # Numbers compare by value, as mongod's distinct does (1 and 1.0 are one).
                number = isinstance(value, int | float) and not isinstance(value, bool)
                encoded = bson.encode({"v": float(value) if number else value})
                if encoded not in seen:
                    seen.add(encoded)
                    values.append(value)
        return {"values": values}

    # -- statistics ------------------------------------------------------------------------

    def _db_stats(self, database: str, _command: dict[str, Any], _client: Client) -> dict[str, Any]:
        opened = self.data.database(database)
        names = [] if opened is None else opened.list_collection_names()
        objects = indexes = 0
        for name in names:
            assert opened is not None
            objects += opened[name].estimated_document_count()
            indexes += len(opened[name].list_indexes())
        size = self.data.file_size(database)
        return {
            "db": database,
            "collections": len(names),
            "views": 0,
            "objects": objects,
            "avgObjSize": size / objects if objects else 0,
            "dataSize": size,  # one file holds documents and indexes: its size for each
            "storageSize": size,
            "indexes": indexes,
            "indexSize": 0,
            "totalSize": size,
            "scaleFactor": 1,
        }

    def _coll_stats(
        self, database: str, command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        collection = self._collection(database, command, "collStats")
        count = 0 if collection is None else collection.estimated_document_count()
        indexes = [] if collection is None else collection.list_indexes()
        return {
            "ns": f"{database}.{command['collStats']}",
            "count": count,
            "size": 0,
            "storageSize": 0,
            "nindexes": len(indexes),
            "totalIndexSize": 0,
            "indexSizes": {index["name"]: 0 for index in indexes},
            "scaleFactor": 1,
        }

    def _diagnostics(self, database: str, name: str, pipeline: list[Any]) -> list[Any]:
        """A pipeline that starts with ``$collStats`` or ``$indexStats`` (Compass's collection
        and index tabs): the server's own figures, then the rest of the pipeline."""
        stats = self._coll_stats(database, {"collStats": name}, Client(0))
        if "$collStats" in pipeline[0]:
            count = stats["count"]
            storage = {
                **{k: v for k, v in stats.items() if k != "ns"},
                "capped": False,
                "avgObjSize": 0,
                "freeStorageSize": 0,
            }
            documents: list[Any] = [
                {
                    "ns": stats["ns"],
                    "host": self.address,
                    "localTime": datetime.now(UTC),
                    "storageStats": storage,
                    "count": count,
                }
            ]
        else:
            collection = self._collection(database, {"aggregate": name}, "aggregate")
            since = datetime.now(UTC)
            documents = [
                {
                    "name": index["name"],
                    "key": index["key"],
                    "host": self.address,
                    "accesses": {"ops": Int64(0), "since": since},  # not counted
                    "spec": index,
                }
                for index in ([] if collection is None else collection.list_indexes())
            ]
        # The rest runs over these few documents; mongomock has no $toDouble, which Compass
        # applies to the figures (numbers already), so it becomes an addition of 0.0.
        rest = [_without_to_double(stage) for stage in pipeline[1:]]
        return list(_aggregation.process_pipeline(documents, None, rest, None))

    # -- explain ---------------------------------------------------------------------------

    def _explain(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        explained = _mapping(command.get("explain"), "explain")
        if not explained:
            raise CommandError("explain: name the command to explain", 2)
        name = next(iter(explained))
        if name == "aggregate":
            return self._explain_pipeline(
                database, explained["aggregate"], list(explained.get("pipeline") or [])
            )
        query_field = {
            "find": "filter",
            "count": "query",
            "distinct": "query",
            "findAndModify": "query",
        }.get(name)
        if query_field is None:
            raise CommandError(f"explain of '{name}' is not supported", 115)
        collection = self._collection(database, explained, name)
        query = _mapping(explained.get(query_field), query_field)
        sort = _sort(explained.get("sort"))
        reply = self._planner(database, explained[name], collection, query, sort)
        if command.get("verbosity", "allPlansExecution") != "queryPlanner" and name == "find":
            started = time.perf_counter()
            returned = len(self._found(database, explained))
            reply["executionStats"] = {
                "executionSuccess": True,
                "nReturned": returned,
                "executionTimeMillis": int((time.perf_counter() - started) * 1000),
            }
        return {**reply, "command": explained}

    def _planner(
        self,
        database: str,
        name: str,
        collection: EmbeddedCollection | None,
        query: Mapping[str, Any],
        sort: list[tuple[str, int]],
    ) -> dict[str, Any]:
        if collection is None:
            plan: dict[str, Any] = {"stage": "EOF"}
        else:
            plan = collection.explain(query, sort or None)
        return {
            "explainVersion": "1",
            "queryPlanner": {
                "namespace": f"{database}.{name}",
                "parsedQuery": dict(query),
                "indexFilterSet": False,
                "winningPlan": plan,
                "rejectedPlans": [],
            },
            "serverInfo": {"host": self.address, "version": SERVER_VERSION},
        }

    def _explain_pipeline(self, database: str, name: Any, pipeline: list[Any]) -> dict[str, Any]:
        if not isinstance(name, str):
            raise CommandError("explain: a database-wide pipeline is not supported", 115)
        first = pipeline[0] if pipeline else {}
        query = first.get("$match") if len(first) == 1 else None
        collection = self._collection(database, {"aggregate": name}, "aggregate")
        planned = self._planner(database, name, collection, query or {}, [])
        rest = pipeline[1:] if isinstance(query, Mapping) else pipeline
        return {
            "explainVersion": "1",
            "stages": [{"$cursor": {"queryPlanner": planned["queryPlanner"]}}, *rest],
            "serverInfo": planned["serverInfo"],
        }

    # -- writing (--writable) --------------------------------------------------------------

    def _insert(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        collection = self._collection(database, command, "insert", create=True)
        assert collection is not None
        documents = command.get("documents")
        if not isinstance(documents, list):
            raise CommandError("insert: 'documents' must be an array", 14)
        ordered = command.get("ordered", True)
        inserted, errors = 0, []
        for index, document in enumerate(documents):
            try:
                collection.insert_one(document)
                inserted += 1
            except (DuplicateKeyError, OperationFailure, ValueError, TypeError) as exc:
                errors.append(_write_error(index, exc))
                if ordered:
                    break
        return {"n": inserted, **({"writeErrors": errors} if errors else {})}

    def _update(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        collection = self._collection(database, command, "update", create=True)
        assert collection is not None
        updates = command.get("updates")
        if not isinstance(updates, list):
            raise CommandError("update: 'updates' must be an array", 14)
        matched = modified = 0
        upserted: list[dict[str, Any]] = []
        errors = []
        for index, spec in enumerate(updates):
            try:
                if not isinstance(spec, Mapping):
                    raise CommandError("each update must be a document", 14)
                for unsupported in ("arrayFilters", "collation"):
                    if spec.get(unsupported):
                        raise CommandError(
                            f"update: {unsupported} is not supported by the embedded engine", 2
                        )
                query, update = _mapping(spec.get("q"), "q"), spec.get("u")
                if _is_replacement(update):
                    if spec.get("multi"):
                        raise CommandError("multi update is not supported for replacement", 9)
                    before, after = self._replace(
                        database, collection, query, update, upsert=bool(spec.get("upsert"))
                    )
                    matched += before is not None
                    modified += before is not None and before != after
                    if before is None and after is not None:
                        upserted.append({"index": index, "_id": after["_id"]})
                    continue
                change = collection.update_many if spec.get("multi") else collection.update_one
                result = change(query, update, upsert=bool(spec.get("upsert")))
                matched += result.matched_count
                modified += result.modified_count
                if result.upserted_id is not None:
                    upserted.append({"index": index, "_id": result.upserted_id})
            except (CommandError, OperationFailure, ValueError, TypeError) as exc:
                errors.append(_write_error(index, exc))
                if command.get("ordered", True):
                    break
        reply: dict[str, Any] = {"n": matched + len(upserted), "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _delete(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        collection = self._collection(database, command, "delete")
        deletes = command.get("deletes")
        if not isinstance(deletes, list):
            raise CommandError("delete: 'deletes' must be an array", 14)
        removed, errors = 0, []
        for index, spec in enumerate(deletes):
            if collection is None:
                break
            try:
                query = _mapping(spec.get("q"), "q")
                remove = (
                    collection.delete_many if spec.get("limit", 0) == 0 else collection.delete_one
                )
                removed += remove(query).deleted_count
            except (CommandError, OperationFailure, ValueError, TypeError) as exc:
                errors.append(_write_error(index, exc))
                if command.get("ordered", True):
                    break
        return {"n": removed, **({"writeErrors": errors} if errors else {})}

    def _find_and_modify(
        self, database: str, command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        name = next(iter(command))
        opened = self.data.database(database, create=True)
        assert opened is not None
        collection = self._collection(database, {name: command[name]}, name, create=True)
        assert collection is not None
        query = _mapping(command.get("query"), "query")
        sort = _sort(command.get("sort")) or None
        fields = _mapping(command.get("fields"), "fields") or None
        upsert = bool(command.get("upsert"))
        with opened.unit_of_work():
            before = collection.find_one(query, sort=sort)
            shown = collection.find_one(query, fields, sort=sort) if fields else before
            if command.get("remove"):
                if before is not None:
                    collection.delete_one({"_id": before["_id"]})
                return {"value": shown, "lastErrorObject": {"n": int(before is not None)}}
            if "update" not in command:
                raise CommandError("findAndModify: give 'update' or 'remove: true'", 9)
            if before is None and not upsert:
                return {"value": None, "lastErrorObject": {"n": 0, "updatedExisting": False}}
            target = query if before is None else {"_id": before["_id"]}
            if _is_replacement(command["update"]):
                _, after = self._replace(
                    database, collection, target, command["update"], upsert=upsert
                )
            else:
                after = collection.find_one_and_update(
                    target, command["update"], upsert=upsert, return_document=ReturnDocument.AFTER
                )
            assert after is not None
            if command.get("new"):
                shown = collection.find_one({"_id": after["_id"]}, fields) if fields else after
        last: dict[str, Any] = {"n": 1, "updatedExisting": before is not None}
        if before is None:
            last["upserted"] = after["_id"]
        return {"value": shown, "lastErrorObject": last}

    def _replace(
        self,
        database: str,
        collection: EmbeddedCollection,
        query: Mapping[str, Any],
        replacement: Mapping[str, Any],
        *,
        upsert: bool,
    ) -> tuple[Any, Any]:
        """A replacement update of the first document ``query`` matches: its fields become
        ``replacement``'s, its ``_id`` kept. The engine updates by operators only, so this is
        a delete and an insert in one transaction (the document is put back if the insert is
        refused, say by a unique index). The document before (None if there was none) and
        after (None if nothing matched and no upsert).

        Raises:
            CommandError: the replacement changes ``_id`` (66, ImmutableField).
            DuplicateKeyError: a unique index refuses the new document.
        """
        opened = self.data.database(database, create=True)
        assert opened is not None
        with opened.unit_of_work():
            before = collection.find_one(query)
            if before is None and not upsert:
                return None, None
            document = {k: v for k, v in replacement.items() if k != "_id"}
            if before is not None:
                if "_id" in replacement and replacement["_id"] != before["_id"]:
                    raise CommandError(
                        "After applying the update, the (immutable) field '_id' was found to "
                        "have been altered",
                        66,
                    )
                document = {"_id": before["_id"], **document}
                collection.delete_one({"_id": before["_id"]})
            elif "_id" in replacement:
                document = {"_id": replacement["_id"], **document}
            elif isinstance(query.get("_id"), str | int | ObjectId):
                document = {"_id": query["_id"], **document}  # an upsert keeps the query's _id
            try:
                collection.insert_one(document)  # an ObjectId _id if it still has none
            except Exception:
                if before is not None:
                    collection.insert_one(before)  # nothing replaced: put it back
                raise
        return before, document

    def _create_indexes(
        self, database: str, command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        collection = self._collection(database, command, "createIndexes", create=True)
        assert collection is not None
        specs = command.get("indexes")
        if not isinstance(specs, list) or not specs:
            raise CommandError("createIndexes: 'indexes' must be a non-empty array", 14)
        before = len(collection.list_indexes()) or 1  # a new collection has the _id index
        for given in specs:
            spec = _mapping(given, "index")
            keys = _mapping(spec.get("key"), "key")
            name = spec.get("name")
            if not keys or not isinstance(name, str):
                raise CommandError("createIndexes: each index needs a 'key' and a 'name'", 2)
            if name == "_id_" or list(keys) == ["_id"]:
                continue  # every collection has it
            options = {k: v for k, v in spec.items() if k not in ("key", "name", "v")}
            collection.create_index(list(keys.items()), name=name, **options)
        return {
            "numIndexesBefore": before,
            "numIndexesAfter": len(collection.list_indexes()),
            "createdCollectionAutomatically": False,
        }

    def _drop_indexes(
        self, database: str, command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        name = next(iter(command))
        collection = self._collection(database, command, name)
        wanted = command.get("index")
        if collection is None:
            raise CommandError(f"ns not found {database}.{command[name]}", 26)
        indexes = collection.list_indexes()
        if wanted == "*":
            names = [i["name"] for i in indexes if i["name"] != "_id_"]
        elif isinstance(wanted, str):
            names = [wanted]
        elif isinstance(wanted, list):
            names = [str(n) for n in wanted]
        else:
            names = [i["name"] for i in indexes if i["key"] == wanted]
            if not names:
                raise CommandError(f"can't find index with key: {wanted}", 27)
        for index in names:
            if index == "_id_":
                raise CommandError("cannot drop _id index", 72)
            collection.drop_index(index)
        return {"nIndexesWas": len(indexes)}

    def _drop(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        collection = self._collection(database, command, "drop")
        if collection is None or not collection.list_indexes():
            raise CommandError(f"ns not found {database}.{command['drop']}", 26)
        indexes = _emptied(collection)
        return {"ns": f"{database}.{command['drop']}", "nIndexesWas": indexes}

    def _drop_database(
        self, database: str, _command: dict[str, Any], _client: Client
    ) -> dict[str, Any]:
        """Every document and index of the database deleted, as writes other processes see
        at once; the file stays (deleting it under a process that has it open would lose
        that process's later writes)."""
        opened = self.data.database(database)
        if opened is not None:
            for name in opened.list_collection_names():
                _emptied(opened[name])
        return {"dropped": database}

    def _create(self, database: str, command: dict[str, Any], _client: Client) -> dict[str, Any]:
        # The engine keeps no empty collection: it exists from its first document or index.
        self._collection(database, command, "create", create=True)
        return {}


def _emptied(collection: EmbeddedCollection) -> int:
    """Delete a collection's documents and indexes; how many indexes it had."""
    indexes = collection.list_indexes()
    for index in indexes:
        if index["name"] != "_id_":
            collection.drop_index(index["name"])
    collection.delete_many({})
    return len(indexes)


def _is_replacement(update: Any) -> TypeGuard[Mapping[str, Any]]:
    """A whole document to put in place of the matched one (no update operators)."""
    return isinstance(update, Mapping) and not any(str(key).startswith("$") for key in update)


def _without_to_double(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"$toDouble"}:
            return {"$add": [_without_to_double(value["$toDouble"]), 0.0]}
        return {key: _without_to_double(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_to_double(item) for item in value]
    return value


def _write_error(index: int, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, DuplicateKeyError):
        return {"index": index, "code": 11000, "errmsg": str(exc)}
    if isinstance(exc, OperationFailure):
        return {"index": index, "code": exc.code or 2, "errmsg": str(exc)}
    code = exc.code if isinstance(exc, CommandError) else 2
    return {"index": index, "code": code, "errmsg": str(exc)}


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CommandError(f"'{name}' must be a document", 14)
    return dict(value)


def _number(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"'{name}' must be a number", 14)
    return int(value)


def _count_option(value: Any, name: str) -> int:
    """A skip or batch size: absent is 0; negative is refused."""
    if value is None:
        return 0
    number = _number(value, name)
    if number < 0:
        raise CommandError(f"'{name}' must not be negative", 51024)
    return number


def _sort(value: Any) -> list[tuple[str, int]]:
    """A sort document as pairs; ``$natural`` (insertion order, the engine's own) dropped."""
    pairs = _mapping(value, "sort")
    for path, direction in pairs.items():
        if direction not in (1, -1) and not isinstance(direction, Mapping):
            raise CommandError(f"$sort: the direction of {path!r} must be 1 or -1", 15975)
    return [(p, int(d)) for p, d in pairs.items() if p != "$natural" and not isinstance(d, Mapping)]
