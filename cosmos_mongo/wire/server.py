"""The asyncio server of ``cosmos-mongo serve``: one task per connection, the commands run on
a small thread pool (the engine blocks), and nothing one client does stops the others.

* It listens on a loopback address (default ``127.0.0.1:27117``) or on a Unix socket made with
  mode 0600; any other address is refused: for a network, use a real MongoDB.
* Connections are bounded (one over the limit is closed at once), and so are open cursors,
  which time out when left idle.
* A frame whose header cannot be trusted (a length over 48 MB, an unknown operation) closes
  its connection; a malformed message inside a sound frame is answered with an error. Once a
  message has started, the rest of it must arrive within ``frame_timeout``, and a reply must
  be taken within ``send_timeout``: a stalled or vanished client loses its connection. An idle
  connection between messages is kept, as drivers keep pooled ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import bson.errors

from cosmos_mongo.errors import InvalidInputError
from cosmos_mongo.wire.commands import Client, Commands, DataDir, error_document
from cosmos_mongo.wire.cursors import Cursors
from cosmos_mongo.wire.protocol import (
    HEADER,
    FrameError,
    MessageError,
    Request,
    encode_reply,
    error_reply,
    parse_header,
    parse_message,
)

log = logging.getLogger("cosmos_mongo.wire")

DEFAULT_PORT: Final = 27117  # beside mongod's 27017, so both can run on one machine


@dataclass(frozen=True)
class ServeOptions:
    """How ``cosmos-mongo serve`` listens and what it allows.

    ``port`` 0 takes a free port. ``socket_path`` listens on a Unix socket instead of TCP.
    """

    data_dir: Path
    database: str = "cosmos"  # the database the printed connection string names
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    socket_path: Path | None = None
    writable: bool = False
    max_connections: int = 64
    max_cursors: int = 1000
    cursor_timeout: float = 600.0  # mongod's cursorTimeoutMillis: ten minutes
    frame_timeout: float = 30.0
    send_timeout: float = 30.0


def loopback_host(host: str) -> str:
    """``host`` as an address to bind, if it is a loopback one (``localhost`` is 127.0.0.1).

    Raises:
        InvalidInputError: it is not a loopback IP address.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInputError(
            "--host", f"must be a loopback IP address such as 127.0.0.1 or ::1, not {host!r}"
        ) from None
    if not address.is_loopback:
        raise InvalidInputError(
            "--host",
            f"{host} is not a loopback address: cosmos-mongo serve listens on this machine "
            "only (127.0.0.1, ::1 or a Unix socket); for a network, use a real MongoDB",
        )
    return str(address)


def _unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 from its creation; a stale socket
    file left by a server that is gone is replaced.

    Raises:
        InvalidInputError: something else is at ``path``, or a server answers there.
    """
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise InvalidInputError("--socket", f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # nothing listens: a server that died left it
            else:
                raise InvalidInputError("--socket", f"a server already listens on {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # no moment with a mode wider than 0600
    try:
        listener.bind(str(path))
    except OSError:
        listener.close()
        raise
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener


class WireServer:
    """A MongoDB wire-protocol endpoint over the embedded databases of a data dir."""

    def __init__(
        self, options: ServeOptions, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options
        self.host = None if options.socket_path else loopback_host(options.host)
        self.data = DataDir(options.data_dir, writable=options.writable)
        self.cursors = Cursors(options.max_cursors, options.cursor_timeout, clock)
        self.commands = Commands(self.data, self.cursors, address=str(options.host))
        self.commands.connections = lambda: len(self._active)
        self._server: asyncio.Server | None = None
        self._active: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._ids = itertools.count(1)
        self._reply_ids = itertools.count(1)
        self._executor = ThreadPoolExecutor(
            max_workers=min(8, options.max_connections), thread_name_prefix="cosmos-serve"
        )
        self._reaper: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        """The connection string for mongosh, Compass or a driver."""
        tail = f"/{self.options.database}?directConnection=true"
        if self.options.socket_path is not None:
            return f"mongodb://{quote(str(self.options.socket_path), safe='')}{tail}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"mongodb://{host}:{self.port}{tail}"

    async def start(self) -> str:
        """Listen; the connection string.

        Raises:
            InvalidInputError: the socket path is taken.
            OSError: the address cannot be bound (the port is in use, say).
        """
        if self.options.socket_path is not None:
            listener = _unix_socket(self.options.socket_path)
            self._server = await asyncio.start_unix_server(self._connection, sock=listener)
        else:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.options.port, reuse_address=True
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        self._reaper = asyncio.create_task(self._reap())
        return self.uri

    async def close(self) -> None:
        """Stop listening, close every connection and database."""
        if self._server is not None:
            self._server.close()
        if self._reaper is not None:
            self._reaper.cancel()
        # Closing each connection ends its task at its next read (a cancelled task would have
        # asyncio log an error for the connection it was serving).
        for writer in self._active.values():
            writer.close()
        if self._active:
            _, pending = await asyncio.wait(list(self._active), timeout=10.0)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        self._executor.shutdown(wait=True)
        self.data.close()
        if self.options.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.options.socket_path.unlink()

    async def _reap(self) -> None:
        period = max(0.05, min(self.options.cursor_timeout / 2, 60.0))
        while True:
            await asyncio.sleep(period)
            self.cursors.expire()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._active) >= self.options.max_connections:
            log.warning("refused a connection: %d are open", len(self._active))
            writer.close()
            return
        self._active[task] = writer
        peer = writer.get_extra_info("peername")
        client = Client(next(self._ids), f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "")
        try:
            while await self._one_message(reader, writer, client):
                pass
        except (FrameError, asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            log.info("closed connection %d: %s", client.connection_id, exc or type(exc).__name__)
        finally:
            self._active.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _one_message(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: Client
    ) -> bool:
        """Read one message and answer it; False once the client has closed between messages.

        Raises:
            FrameError: the header cannot be trusted.
            asyncio.IncompleteReadError: the client left in the middle of a message.
            TimeoutError: the rest of a message, or the taking of a reply, took too long.
        """
        first = await reader.read(1)
        if not first:
            return False
        timeout = self.options.frame_timeout
        head = first + await asyncio.wait_for(reader.readexactly(HEADER.size - 1), timeout)
        header = parse_header(head)
        body = await asyncio.wait_for(reader.readexactly(header.length - HEADER.size), timeout)
        try:
            request = parse_message(header, body)
        except MessageError as exc:
            await self._send(writer, error_reply(header, exc, next(self._reply_ids)))
            return True
        if request.command:  # -vv shows each command (what a client sends is in the log)
            log.debug(
                "connection %d: %s on %s",
                client.connection_id,
                next(iter(request.command)),
                request.database,
            )
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            self._executor, self.commands.run, request.database, request.command, client
        )
        if not request.more_to_come:
            await self._send(writer, self._encoded(request, reply))
        return True

    def _encoded(self, request: Request, reply: dict[str, Any]) -> bytes:
        try:
            return encode_reply(request, reply, next(self._reply_ids))
        except (bson.errors.BSONError, OverflowError, ValueError) as exc:
            failed = error_document(f"the reply cannot be sent as BSON: {exc}", 10334)
            return encode_reply(request, failed, next(self._reply_ids))

    async def _send(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        writer.write(frame)
        await asyncio.wait_for(writer.drain(), self.options.send_timeout)


def serve(options: ServeOptions, announce: Callable[[str], None]) -> None:
    """Run a server until SIGINT or SIGTERM; ``announce`` gets its connection string once it
    listens.

    Raises:
        InvalidInputError: a non-loopback host, or a socket path that is taken.
        OSError: the address cannot be bound.
    """

    async def main() -> None:
        server = WireServer(options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            announce(await server.start())
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(main())


@contextlib.contextmanager
def running(
    options: ServeOptions, *, clock: Callable[[], float] = time.monotonic
) -> Iterator[WireServer]:
    """A server listening on its own thread's event loop while the block runs (for a Python
    program, a test or a benchmark that talks to it from this thread); closed on the way out.

    Raises:
        InvalidInputError: a non-loopback host, or a socket path that is taken.
        OSError: the address cannot be bound.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cosmos-serve-loop", daemon=True)
    thread.start()
    server: WireServer | None = None
    try:
        server = WireServer(options, clock=clock)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=60)
        yield server
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=60)
        loop.close()
