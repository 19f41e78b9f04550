"""The server's open cursors: what a ``find``, ``aggregate`` or ``listIndexes`` has not sent
yet, given out a batch per ``getMore``.

The engine answers a read whole inside one transaction (a cursor must not outlive it), so a
cursor holds the rest of that answer. Their number is bounded, and one left idle longer than
the timeout is closed, as mongod closes idle cursors after ten minutes; a ``getMore`` on it
then gets ``CursorNotFound``.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import bson

from cosmos_mongo.wire.protocol import MAX_BSON_BYTES

DEFAULT_BATCH: Final = 101  # mongod's first batch when the client names none
# A batch stops near the BSON limit: the reply holds the batch and a few fields beside it.
_BATCH_BYTES: Final = MAX_BSON_BYTES - 64 * 1024


class CursorError(Exception):
    """A cursor operation the server refuses; ``code`` and ``code_name`` are MongoDB's."""

    def __init__(self, message: str, code: int, code_name: str) -> None:
        super().__init__(message)
        self.code, self.code_name = code, code_name


@dataclass
class _Cursor:
    namespace: str
    documents: list[Any]
    position: int = 0
    used: float = field(default_factory=time.monotonic)


def take_batch(documents: Sequence[Any], start: int, size: int) -> list[Any]:
    """Up to ``size`` documents (0: no count limit) from ``start``, stopping before the batch
    would pass the BSON size limit (always at least one document)."""
    batch: list[Any] = []
    total = 0
    for document in itertools.islice(documents, start, start + size if size else None):
        total += len(bson.encode(document))
        if batch and total > _BATCH_BYTES:
            break
        batch.append(document)
    return batch


class Cursors:
    """The open cursors, shared by every connection (a cursor may be continued from
    another one, as on mongod). Thread-safe."""

    def __init__(
        self, limit: int, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.timeout, self._clock = limit, timeout, clock
        self._open: dict[int, _Cursor] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def first_batch(
        self,
        namespace: str,
        documents: list[Any],
        batch_size: int | None,
        single_batch: bool = False,
    ) -> tuple[list[Any], int]:
        """The first batch of ``documents`` (``batch_size`` of them, 101 if None) and the id of
        a cursor holding the rest (0 if none is left or ``single_batch``).

        Raises:
            CursorError: the rest needs a cursor and :attr:`limit` are open.
        """
        # None: the server's default; 0: an empty first batch, the cursor only (as mongod).
        size = DEFAULT_BATCH if batch_size is None else batch_size
        batch = take_batch(documents, 0, size) if size else []
        if single_batch or len(batch) == len(documents):
            return batch, 0
        self.expire()
        with self._lock:
            if len(self._open) >= self.limit:
                raise CursorError(
                    f"too many open cursors ({self.limit}): close some (killCursors), read "
                    "them to the end, or let them time out",
                    2,
                    "BadValue",
                )
            cursor_id = self._new_id()
            self._open[cursor_id] = _Cursor(namespace, documents, len(batch), self._clock())
        return batch, cursor_id

    def _new_id(self) -> int:
        while True:  # positive and unguessable, as mongod's (a 0 id means "no cursor")
            cursor_id = random.SystemRandom().randrange(1, 2**63)
            if cursor_id not in self._open:
                return cursor_id

    def next_batch(self, cursor_id: int, namespace: str, batch_size: int) -> tuple[list[Any], int]:
        """The next batch of the cursor (up to ``batch_size``, 0: up to the size limit) and
        its id, or 0 once it is exhausted (and closed).

        Raises:
            CursorError: no such cursor (never opened, read to the end, killed or timed out),
                or it belongs to another namespace.
        """
        self.expire()
        with self._lock:
            cursor = self._open.get(cursor_id)
            if cursor is None:
                raise CursorError(f"cursor id {cursor_id} not found", 43, "CursorNotFound")
            if cursor.namespace != namespace:
                raise CursorError(
                    f"cursor id {cursor_id} belongs to {cursor.namespace}, not {namespace}",
                    13,
                    "Unauthorized",
                )
            batch = take_batch(cursor.documents, cursor.position, batch_size)
            cursor.position += len(batch)
            cursor.used = self._clock()
            if cursor.position >= len(cursor.documents):
                del self._open[cursor_id]
                return batch, 0
            return batch, cursor_id

    def kill(self, cursor_ids: Iterable[int]) -> tuple[list[int], list[int]]:
        """Close these cursors; the ids closed and the ids not found."""
        killed: list[int] = []
        missing: list[int] = []
        with self._lock:
            for cursor_id in cursor_ids:
                (killed if self._open.pop(cursor_id, None) is not None else missing).append(
                    cursor_id
                )
        return killed, missing

    def expire(self) -> int:
        """Close the cursors idle longer than :attr:`timeout`; how many."""
        deadline = self._clock() - self.timeout
        with self._lock:
            stale = [i for i, cursor in self._open.items() if cursor.used < deadline]
            for cursor_id in stale:
                del self._open[cursor_id]
        return len(stale)
