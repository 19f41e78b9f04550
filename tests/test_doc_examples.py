"""Every Python example in README.md and docs/*.md runs: a file's blocks in order, in one
namespace, on the embedded default in a scratch directory. A block whose first line is
``# needs a MongoDB server`` runs only in the real-server suite (``MONGODB_URI``)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SERVER_ONLY = "# needs a MongoDB server"
DOCUMENTS = sorted(
    path.relative_to(REPO).as_posix()
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    if BLOCK.search(path.read_text())
)
MONGODB_URI = os.environ.get("MONGODB_URI")


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


@pytest.mark.realserver
@pytest.mark.skipif(not MONGODB_URI, reason="set MONGODB_URI to run against a server")
@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_server_examples_run_on_a_server(document: str) -> None:
    from cosmos_mongo import CosmosStore

    server_blocks = [source for source in blocks(document) if source.startswith(SERVER_ONLY)]
    if not server_blocks:
        return
    with CosmosStore.connect(MONGODB_URI) as store:
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        namespace: dict[str, Any] = {
            "CosmosStore": CosmosStore,
            "uri": MONGODB_URI,
            "prompt_id": prompt.id,
        }
        for number, source in enumerate(server_blocks, 1):
            on_server = source.replace("mongodb://localhost:27017", str(MONGODB_URI))
            run_block(on_server, namespace, f"{document} server block {number}")
        store.delete_prompt(prompt.id)
