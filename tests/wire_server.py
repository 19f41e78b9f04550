"""The MongoDB server the real-server tests talk to over the wire.

``MONGODB_URI`` set: that server (a real mongod in ``.github/workflows/mongodb.yml``).
Unset: a SecantusDB server (``pip install SecantusDB``, a test-only dependency under GPL-2.0,
never imported by the package) started here on a free loopback port, in a scratch directory,
with its test commands on (``configureFailPoint``), and stopped when the session ends.

SecantusDB speaks the wire protocol but is not mongod. Where it departs from the MongoDB
manual, a test marks the gap with :func:`stand_in_gap`: a strict xfail on the stand-in only,
so the same test must pass on mongod.

``MONGODB_URI`` may also point at ``cosmos-mongo serve --writable`` (its buildInfo says so):
the suite then runs over the wire on the embedded engine, and :func:`serve_gap` marks what
the engine does not have, the same way (docs/DEVELOPMENT.md shows the command).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# A start on a busy machine (two cores, the suite's other processes) takes 2-4 s.
_START_TIMEOUT = 60.0
REPLICA_SET = "secantus"


@dataclass
class WireServer:
    uri: str
    stand_in: bool  # SecantusDB rather than mongod
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None
    serve: bool = False  # cosmos-mongo serve over the embedded engine rather than mongod

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _secantus_command() -> list[str]:
    """The launcher next to this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("secantusd-py")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("secantusd-py")
    if found is None:
        raise RuntimeError(
            "secantusd-py not found: the real-server tests need SecantusDB "
            "(pip install -e '.[test]'), or MONGODB_URI pointing at a MongoDB server"
        )
    return [found]


def _answers(uri: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: Any = MongoClient(uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
    try:
        return bool(client.admin.command("hello").get("isWritablePrimary"))
    except PyMongoError:
        return False
    finally:
        client.close()


def start_secantus() -> WireServer:
    """A fresh SecantusDB on a free loopback port, answering as a writable primary."""
    directory = Path(tempfile.mkdtemp(prefix="cosmos-secantus-"))
    port = _free_port()
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(
        [
            *_secantus_command(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(directory / "data"),
            "--enable-test-commands",
            "--log-level",
            "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    server = WireServer(
        f"mongodb://127.0.0.1:{port}/?replicaSet={REPLICA_SET}", True, process, directory
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (directory / "server.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"SecantusDB exited with {process.returncode}:\n{output}")
        if _answers(server.uri):
            return server
    server.stop()
    raise RuntimeError(f"SecantusDB did not answer within {_START_TIMEOUT:g} s")


def _build_info(uri: str) -> dict[str, Any]:
    from pymongo import MongoClient

    client: Any = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        return dict(client.admin.command("buildInfo"))
    finally:
        client.close()


def is_stand_in(uri: str) -> bool:
    """Whether the server at ``uri`` is SecantusDB (its buildInfo says so), not mongod."""
    return "secantusVersion" in _build_info(uri)


def open_wire_server() -> WireServer:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        info = _build_info(uri)
        return WireServer(uri, "secantusVersion" in info, serve="cosmosMongoVersion" in info)
    return start_secantus()


# The gaps: where SecantusDB departs from the MongoDB manual. Each test that names one shows
# it in a three-line mongosh reproduction.
TEXT_INDEX_GAP = "no text indexes: createIndex with a 'text' key fails with code 67"
SORT_STAGE_GAP = (
    "its planner adds a SORT stage over an index scan that already gives the sort order"
)
ROOTED_OR_GAP = (
    "a rooted $or is planned as a COLLSCAN where mongod scans each branch's index and merges"
)
MULTI_FIELD_GAP = (
    "a filter on two or more fields is planned as a COLLSCAN where mongod scans the index of "
    "one of them"
)
RETRY_REPLAY_GAP = (
    "a retried write whose maxTimeMS differs from the first attempt's (as each retry under "
    "pymongo's timeoutMS does) is executed again instead of answered from the first"
)


def stand_in_gap(request: pytest.FixtureRequest, server: WireServer, gap: str) -> None:
    """Mark the running test a strict xfail on SecantusDB only: ``gap`` names where the
    stand-in departs from the MongoDB manual. On mongod the test must pass."""
    if server.stand_in:
        request.applymarker(pytest.mark.xfail(reason=f"SecantusDB: {gap}", strict=True))


# What the embedded engine does not have, seen through `cosmos-mongo serve`.
SERVE_TEXT_GAP = "no text indexes: the embedded engine does not implement $text"
SERVE_ROOTED_OR_GAP = (
    "a rooted $or reads each branch's index, then sorts in memory (a SORT stage) where mongod "
    "merges the branches in index order"
)


def serve_gap(request: pytest.FixtureRequest, server: WireServer, gap: str) -> None:
    """Mark the running test a strict xfail when the server is ``cosmos-mongo serve``:
    ``gap`` names what the embedded engine does not have. On mongod the test must pass."""
    if server.serve:
        request.applymarker(pytest.mark.xfail(reason=f"cosmos-mongo serve: {gap}", strict=True))
