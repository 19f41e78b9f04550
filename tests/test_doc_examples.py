"""Every Python example in README.md and docs/*.md runs: a file's blocks in order, in one
namespace, on the embedded default in a scratch directory. A block whose first line is
``# needs a MongoDB server`` runs in the real-server suite, on a scratch database of the test
server (``tests/wire_server.py``), and every client it opens is closed."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.wire_server import (
    SERVE_TEXT_GAP,
    TEXT_INDEX_GAP,
    WireServer,
    serve_gap,
    stand_in_gap,
)

REPO = Path(__file__).parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SERVER_ONLY = "# needs a MongoDB server"
DOCUMENTS = sorted(
    path.relative_to(REPO).as_posix()
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    if BLOCK.search(path.read_text())
)


def blocks(document: str) -> list[str]:
    return BLOCK.findall((REPO / document).read_text())


def run_block(source: str, namespace: dict[str, Any], where: str) -> None:
    code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, namespace))  # top-level await, as in an async REPL
    else:
        exec(code, namespace)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_example_runs(document: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.predecessor_db import sample

    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    sample(tmp_path / "outputs" / "cosmos.db")  # the predecessor's file the import example reads
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    for number, source in enumerate(blocks(document), 1):
        if not source.startswith(SERVER_ONLY):
            run_block(source, namespace, f"{document} python block {number}")
    store = namespace.get("store")
    if hasattr(store, "close"):
        store.close()


SERVER_BLOCKS = [
    pytest.param(document, source, id=f"{document}-{number}")
    for document in DOCUMENTS
    for number, source in enumerate(
        (source for source in blocks(document) if source.startswith(SERVER_ONLY)), 1
    )
]


@pytest.mark.realserver
@pytest.mark.parametrize(("document", "source"), SERVER_BLOCKS)
def test_the_server_examples_run_on_a_server(
    document: str,
    source: str,
    wire_server: WireServer,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each server block runs on a scratch database of the test server, never on a real
    ``cosmos`` database: the name is swapped in the source and in the settings."""
    from pymongo import MongoClient

    from cosmos_mongo import CosmosStore

    if "create_text_index" in source:
        stand_in_gap(request, wire_server, TEXT_INDEX_GAP)
        serve_gap(request, wire_server, SERVE_TEXT_GAP)
    uri = wire_server.uri
    scratch = f"cosmos_doc_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("COSMOS_MONGO_DATABASE", scratch)
    try:
        with CosmosStore.connect(uri, scratch) as store:
            prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
            namespace: dict[str, Any] = {
                "CosmosStore": CosmosStore,
                "uri": uri,
                "prompt_id": prompt.id,
            }
            on_server = source.replace("mongodb://localhost:27017", uri).replace(
                '"cosmos"', repr(scratch)
            )
            run_block(on_server, namespace, f"{document} server block")
    finally:
        with MongoClient(uri) as client:
            client.drop_database(scratch)
