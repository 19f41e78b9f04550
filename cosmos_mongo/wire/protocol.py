"""The MongoDB wire protocol's framing: message headers, OP_MSG (every command of a current
driver) and the legacy OP_QUERY on ``<db>.$cmd`` that drivers still send for their first
handshake, answered with OP_REPLY. Pure functions over bytes; the server does the I/O.

Two kinds of bad input: a frame whose header cannot be trusted (:class:`FrameError`: the length
is below a header's or above :data:`MAX_MESSAGE_BYTES`, or the operation is unknown) ends the
connection, since where the next message starts is unknown; a whole frame whose content is
malformed (:class:`MessageError`) is answered with an error and the connection goes on.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import bson
import bson.errors
from bson.codec_options import CodecOptions

OP_REPLY: Final = 1
OP_QUERY: Final = 2004
OP_COMPRESSED: Final = 2012
OP_MSG: Final = 2013
MAX_MESSAGE_BYTES: Final = 48_000_000  # mongod's maxMessageSizeBytes
MAX_BSON_BYTES: Final = 16 * 1024 * 1024  # mongod's maxBsonObjectSize
HEADER: Final = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode

_CHECKSUM_PRESENT: Final = 1
_MORE_TO_COME: Final = 1 << 1
_EXHAUST_ALLOWED: Final = 1 << 16
# Flag bits 0-15 are required: a receiver must refuse a message with one it does not know.
_KNOWN_REQUIRED: Final = _CHECKSUM_PRESENT | _MORE_TO_COME
_REQUIRED_MASK: Final = 0xFFFF
# Datetimes come in aware (UTC), as the library's tz_aware clients read them.
DECODING: Final[CodecOptions[dict[str, Any]]] = CodecOptions(tz_aware=True)


class FrameError(Exception):
    """A frame the server cannot read past: the connection is closed."""


class MessageError(Exception):
    """A complete frame whose content is malformed: answered with an error (``code``)."""

    def __init__(self, message: str, code: int = 22, code_name: str = "InvalidBSON") -> None:
        super().__init__(message)
        self.code, self.code_name = code, code_name


@dataclass(frozen=True)
class Header:
    length: int
    request_id: int
    response_to: int
    op_code: int


@dataclass(frozen=True)
class Request:
    """One command as the client sent it: its database, and the command document with any
    OP_MSG document sequences (an insert's ``documents``...) merged in as lists."""

    op_code: int
    request_id: int
    database: str
    command: dict[str, Any]
    more_to_come: bool = False  # the client wants no reply


def parse_header(data: bytes) -> Header:
    """The header of a frame from its first 16 bytes.

    Raises:
        FrameError: the length is shorter than a header or longer than
            :data:`MAX_MESSAGE_BYTES`, or the operation is not OP_MSG or OP_QUERY.
    """
    length, request_id, response_to, op_code = HEADER.unpack(data)
    if length < HEADER.size or length > MAX_MESSAGE_BYTES:
        raise FrameError(
            f"message length {length} is outside {HEADER.size}..{MAX_MESSAGE_BYTES} bytes"
        )
    if op_code not in (OP_MSG, OP_QUERY):
        # OP_COMPRESSED is never sent: the handshake's reply offers no compressor.
        raise FrameError(f"unsupported operation code {op_code}")
    return Header(length, request_id, response_to, op_code)


def _document(data: bytes, offset: int, what: str) -> tuple[dict[str, Any], int]:
    """The BSON document at ``offset`` and the offset after it."""
    if offset + 4 > len(data):
        raise MessageError(f"{what}: the message ends before the document")
    (size,) = struct.unpack_from("<i", data, offset)
    if size < 5 or offset + size > len(data):
        raise MessageError(f"{what}: a document of {size} bytes does not fit the message")
    try:
        document = bson.decode(data[offset : offset + size], DECODING)
    except (bson.errors.BSONError, ValueError, OverflowError) as exc:
        raise MessageError(f"{what}: invalid BSON: {exc}") from exc
    return document, offset + size


def _cstring(data: bytes, offset: int, what: str) -> tuple[str, int]:
    end = data.find(b"\x00", offset)
    if end < 0:
        raise MessageError(f"{what}: an unterminated string")
    try:
        return data[offset:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise MessageError(f"{what}: a string that is not UTF-8") from exc


def parse_message(header: Header, body: bytes) -> Request:
    """The command in a frame's ``body`` (the bytes after its header).

    Raises:
        MessageError: the body is malformed: no command, invalid BSON, an unknown required
            flag, an OP_QUERY that is not a command.
    """
    if header.op_code == OP_QUERY:
        return _parse_query(header, body)
    if len(body) < 5:
        raise MessageError("OP_MSG: too short for its flags and a section")
    (flags,) = struct.unpack_from("<I", body, 0)
    if flags & _REQUIRED_MASK & ~_KNOWN_REQUIRED:
        raise MessageError(f"OP_MSG: unknown required flag bits {flags:#x}", 2, "BadValue")
    end = len(body) - (4 if flags & _CHECKSUM_PRESENT else 0)
    command: dict[str, Any] | None = None
    sequences: dict[str, list[Any]] = {}
    offset = 4
    while offset < end:
        kind = body[offset]
        offset += 1
        if kind == 0:
            if command is not None:
                raise MessageError("OP_MSG: more than one body section", 2, "BadValue")
            command, offset = _document(body[:end], offset, "OP_MSG body")
        elif kind == 1:
            if offset + 4 > end:
                raise MessageError("OP_MSG: a document sequence without its size")
            (size,) = struct.unpack_from("<i", body, offset)
            stop = offset + size
            if size < 5 or stop > end:
                raise MessageError(f"OP_MSG: a document sequence of {size} bytes does not fit")
            name, position = _cstring(body[:stop], offset + 4, "OP_MSG sequence")
            documents = []
            while position < stop:
                document, position = _document(body[:stop], position, f"OP_MSG {name}")
                documents.append(document)
            sequences.setdefault(name, []).extend(documents)
            offset = stop
        else:
            raise MessageError(f"OP_MSG: unknown section kind {kind}", 2, "BadValue")
    if command is None:
        raise MessageError("OP_MSG: no body section", 2, "BadValue")
    for name, documents in sequences.items():
        command[name] = documents
    database = command.get("$db")
    if not isinstance(database, str) or not database:
        raise MessageError("OP_MSG: the command names no $db", 40571, "Location40571")
    return Request(OP_MSG, header.request_id, database, command, bool(flags & _MORE_TO_COME))


def _parse_query(header: Header, body: bytes) -> Request:
    """An OP_QUERY on ``<db>.$cmd``: the handshake of a driver that does not know the server
    yet. (The query may be wrapped in ``$query`` with a ``$readPreference`` beside it.)"""
    if len(body) < 4:
        raise MessageError("OP_QUERY: too short for its flags")
    namespace, offset = _cstring(body, 4, "OP_QUERY namespace")
    database, _, collection = namespace.partition(".")
    if collection != "$cmd" or not database:
        raise MessageError(
            f"OP_QUERY is only supported for commands, not on {namespace!r}: use OP_MSG",
            5739101,
            "Location5739101",
        )
    query, _ = _document(body, offset + 8, "OP_QUERY query")
    if "$query" in query and isinstance(query["$query"], Mapping):
        query = dict(query["$query"])
    return Request(OP_QUERY, header.request_id, database, query)


def encode_reply(request: Request, document: Mapping[str, Any], request_id: int) -> bytes:
    """The frame answering ``request`` with ``document``: an OP_MSG, or an OP_REPLY to an
    OP_QUERY."""
    encoded = bson.encode(document)
    if request.op_code == OP_QUERY:
        # responseFlags, cursorID, startingFrom, numberReturned
        payload = struct.pack("<iqii", 0, 0, 0, 1) + encoded
        op_code = OP_REPLY
    else:
        payload = struct.pack("<IB", 0, 0) + encoded
        op_code = OP_MSG
    header = HEADER.pack(HEADER.size + len(payload), request_id, request.request_id, op_code)
    return header + payload


def error_reply(header: Header, message: MessageError, request_id: int) -> bytes:
    """The error answering a frame whose content could not be read, in the reply kind of its
    operation."""
    document = {
        "ok": 0.0,
        "errmsg": str(message),
        "code": message.code,
        "codeName": message.code_name,
    }
    stand_in = Request(header.op_code, header.request_id, "", {})
    return encode_reply(stand_in, document, request_id)
