"""The embedded default database: a SQLite file holds the documents and their indexes, and
mongomock's matching, update and aggregation code answers on the few documents a query needs.

How it holds together (docs/DEVELOPMENT.md, "The embedded engine", walks through it):

* **Nothing is loaded at open.** Each operation reads what it needs from the file inside one
  SQLite transaction, so opening costs the same at any size and every process sees the
  others' committed writes at once.
* **Indexes on disk.** Every declared index is a range of rows in the ``entries`` table: one
  row per document (per array element for an array), keyed by the indexed values encoded so
  that SQLite's byte order is MongoDB's sort order. A query's equality terms pick a key range,
  its range terms narrow it, and a sort the index matches is a walk in key order that stops at
  ``limit``. Only the documents that range names are decoded; mongomock's ``filter_applies``
  then applies the whole filter, so the answer is the one a scan would give.
* **Durable.** Every write is one SQLite transaction (WAL, ``synchronous=FULL``) covering the
  document rows and their index entries; when a write returns, it is on disk. Writers
  serialize on SQLite's write lock (``BEGIN IMMEDIATE``).
* **mongomock semantics.** Updates run mongomock's own ``update_one``/``update_many`` on a
  scratch collection holding only the target documents; aggregation runs mongomock's pipeline
  on the documents of a leading ``$match``, with ``$lookup`` and ``$graphLookup`` served by
  the same indexed ``find``. Ties in a sort keep insertion order, as mongomock's stable sort
  does (each document keeps its ``arrival`` number).

The classes mirror the part of the pymongo API the library uses. ``find`` and ``aggregate``
return lists, because a cursor must not outlive its transaction.

The package's modules, each importing only those above it (docs/DEVELOPMENT.md, "The engine
package"): :mod:`~cosmos_mongo.embedded.storage`, :mod:`~cosmos_mongo.embedded.integrity`,
:mod:`~cosmos_mongo.embedded.keys`, :mod:`~cosmos_mongo.embedded.planning`,
:mod:`~cosmos_mongo.embedded.reading`, :mod:`~cosmos_mongo.embedded.writing`,
:mod:`~cosmos_mongo.embedded.engine`, :mod:`~cosmos_mongo.embedded.pipeline` and
:mod:`~cosmos_mongo.embedded.surface`. This module re-exports their public names.
"""

from cosmos_mongo.embedded.engine import EmbeddedEngine, EngineStats, IndexRebuild, IndexRebuilt
from cosmos_mongo.embedded.integrity import DAMAGE_ADVICE
from cosmos_mongo.embedded.storage import check_database_name
from cosmos_mongo.embedded.surface import (
    AsyncEmbeddedCollection,
    AsyncEmbeddedDatabase,
    EmbeddedCollection,
    EmbeddedDatabase,
    open_embedded,
)

__all__ = [
    "DAMAGE_ADVICE",
    "AsyncEmbeddedCollection",
    "AsyncEmbeddedDatabase",
    "EmbeddedCollection",
    "EmbeddedDatabase",
    "EmbeddedEngine",
    "EngineStats",
    "IndexRebuild",
    "IndexRebuilt",
    "check_database_name",
    "open_embedded",
]
