"""Watching prompts and runs for changes, written once for both store twins.

A :class:`ChangeWatch` holds what a watcher has seen: the documents it watches and the
database's change stamp at the last look. :func:`poll` is one look, a workflow both twins
drive (``store.poll_changes(watch)``): it asks the database for its change stamp and, when
nothing has committed since the last look, reads nothing. The embedded default has such a
stamp (SQLite's ``data_version`` and the connection's own commit count), so another
process's write is seen at the next look for the price of one pragma. On a server whose
topology has change streams, the watch keeps one open over prompts and runs, and its count of
reported changes is the stamp. Other databases have none: each look then reads the watched
documents (one ``find`` per collection) and compares them with what it saw before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cosmos_mongo import queries as q
from cosmos_mongo import validation as v
from cosmos_mongo.ops import ChangeFeed, ChangeStamp, Document, Find, Flow

Kind = Literal["prompt", "run"]
Watched = tuple[Kind, str]
"""A watched document: ``("prompt", "ps_...")`` or ``("run", "rs_...")``."""

_COLLECTIONS: Final[dict[Kind, str]] = {"prompt": q.PROMPTS, "run": q.RUNS}
_UNSEEN: Final = object()  # no look yet: never equal to a stamp


@dataclass
class ChangeWatch:
    """The documents a watcher follows and what it last saw of them. Not thread-safe: one
    watcher looks at a time. ``add`` and ``discard`` may be called between looks."""

    _seen: dict[Watched, Document | None] = field(default_factory=dict)
    _unread: set[Watched] = field(default_factory=set)
    _stamp: Any = _UNSEEN
    _feed: ChangeFeed = field(default_factory=ChangeFeed)

    def add(self, kind: Kind, document_id: str) -> None:
        """Follow a document; the next look records it as it is then (no change reported).

        Raises:
            InvalidInputError: ``document_id`` is not an id of that kind.
        """
        checked = (
            v.check_prompt_id(document_id) if kind == "prompt" else v.check_run_id(document_id)
        )
        if (kind, checked) not in self._seen:
            self._unread.add((kind, checked))

    def discard(self, kind: Kind, document_id: str) -> None:
        """Stop following a document (nothing happens if it was not followed)."""
        self._seen.pop((kind, document_id), None)
        self._unread.discard((kind, document_id))

    @property
    def watched(self) -> frozenset[Watched]:
        return frozenset(self._seen) | frozenset(self._unread)

    def settle(self, stamp: Any, found: Mapping[Watched, Document | None]) -> list[Watched]:
        """Record one look's stamp and documents; return the followed ones that changed
        (created, rewritten or deleted) since the last look, in a stable order."""
        changed = [
            key for key, now in found.items() if key in self._seen and self._seen[key] != now
        ]
        for key, now in found.items():
            if key in self._seen or key in self._unread:
                self._seen[key] = now
                self._unread.discard(key)
        self._stamp = stamp
        return sorted(changed)

    def needs_reading(self, stamp: Any) -> bool:
        """Whether a look with this stamp must read documents: the database has no stamp,
        it moved, or a document has not been read yet."""
        return stamp is None or stamp != self._stamp or bool(self._unread)


def poll(watch: ChangeWatch) -> Flow[list[Watched]]:
    """One look: the followed documents that changed since the previous look."""
    stamp = yield from ChangeStamp(watch._feed, tuple(_COLLECTIONS.values()))
    if not watch.needs_reading(stamp):
        return []
    found: dict[Watched, Document | None] = {}
    for kind, collection in _COLLECTIONS.items():
        ids = sorted(document_id for k, document_id in watch.watched if k == kind)
        if not ids:
            continue
        documents = yield from Find(collection, {"_id": {"$in": ids}})
        by_id = {str(document["_id"]): document for document in documents}
        found.update({(kind, document_id): by_id.get(document_id) for document_id in ids})
    return watch.settle(stamp, found)


def stop(watch: ChangeWatch) -> Flow[None]:
    """Close the watch's change stream, if a server opened one; a later look reopens it."""
    yield from ChangeStamp(watch._feed, close=True)
