"""Adopting the library: async opening, docstrings an IDE shows, exports, a lean core."""

from __future__ import annotations

import ast
import asyncio
import inspect
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cosmos_mongo
from cosmos_mongo import AsyncCosmosStore, CosmosStore, Settings
from cosmos_mongo.store import public_methods

REPO = Path(__file__).parent.parent


def test_async_connect_is_awaitable_and_an_async_context_manager(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    async def use() -> list[str]:
        async with AsyncCosmosStore.connect(settings=settings) as store:
            prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
            opened = store
        assert opened._on_close is None  # closed on leaving the block
        again = await AsyncCosmosStore.connect(settings=settings)
        try:
            return [p.id for p in await again.list_prompts()] + [prompt.id]
        finally:
            await again.aclose()

    found, created = asyncio.run(use())
    assert found == created


def test_both_twins_carry_their_docstrings_in_source() -> None:
    tree = ast.parse((REPO / "cosmos_mongo" / "store.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for twin in ("CosmosStore", "AsyncCosmosStore"):
        methods = {
            node.name: ast.get_docstring(node)
            for node in classes[twin].body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        for name in public_methods(CosmosStore) - {"close"}:
            if name in methods:
                assert methods[name], f"{twin}.{name} has no docstring in source"
    for name in public_methods(CosmosStore) - {"close", "connect"}:
        sync_doc = inspect.getdoc(getattr(CosmosStore, name))
        assert inspect.getdoc(getattr(AsyncCosmosStore, name)) == sync_doc, name


def test_the_public_names_import_from_the_package() -> None:
    for name in cosmos_mongo.__all__:
        assert hasattr(cosmos_mongo, name), name
    for name in ("EnhancementError", "EnhancementResult", "Lineage", "Settings", "RepairReport"):
        assert name in cosmos_mongo.__all__


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


BLOCK_MCP = "import sys\nfor name in ('mcp', 'mcp_types', 'starlette', 'uvicorn'): sys.modules[name] = None\n"


def test_the_library_and_its_cli_import_without_the_mcp_stack() -> None:
    result = _python(
        BLOCK_MCP
        + "import cosmos_mongo, cosmos_mongo.cli, cosmos_mongo.embedded\n"
        + "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        + "('mcp', 'starlette', 'uvicorn', 'jsonschema', 'jwt') and sys.modules[m]))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_mcp_server_without_its_extra_says_what_to_install() -> None:
    result = _python(BLOCK_MCP + "from mcp_server.launch import main\nmain()")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "cosmos-mongo-mcp: the cosmos-mongo MCP server needs the MCP SDK: pip install "
        "'cosmos-mongo[mcp]' (from a clone: .venv/bin/pip install -e '.[mcp]')"
    )


def test_the_core_install_leaves_the_mcp_stack_to_its_extra() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {requirement.split(">")[0].split("[")[0] for requirement in project["dependencies"]}
    assert not core & {"mcp", "starlette", "uvicorn", "jsonschema"}
    assert any(r.startswith("mcp") for r in project["optional-dependencies"]["mcp"])
    assert project["scripts"]["cosmos-mongo-mcp"] == "mcp_server.launch:main"


def collect(store: Any, method: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Drain an iterator from either twin (AwaitingStore drives the async one)."""
    inner = getattr(store, "async_store", None)
    if inner is None:
        return list(getattr(store, method)(*args, **kwargs))

    async def drain() -> list[Any]:
        return [item async for item in getattr(inner, method)(*args, **kwargs)]

    return store.runner.run(drain())  # type: ignore[no-any-return]


def test_iterators_stream_everything_in_listing_order(backend: Any) -> None:
    store = backend.store
    prompts = [store.create_prompt(f"Prompt {i}", {}, {}) for i in range(7)]
    store.enhance_prompt(prompts[0].id, enhanced_text="A child.")
    for prompt in prompts[:3]:
        store.create_run(prompt.id, {}, initial_status="failed")
    every = collect(store, "iter_prompts", batch_size=3)
    assert [p.id for p in every] == [p.id for p in store.list_prompts(limit=100)]
    flagged = collect(store, "iter_prompts", enhanced=True, batch_size=1)
    assert [p.id for p in flagged] == [p.id for p in store.list_enhanced_prompts()]
    failed = collect(store, "iter_runs", status="failed", batch_size=2)
    assert [r.id for r in failed] == [r.id for r in store.list_runs(status="failed")]
    raw = collect(store, "iter_documents", "runs", batch_size=2)
    assert sorted(d["_id"] for d in raw) == sorted(r.id for r in store.list_runs(limit=100))


def test_iteration_goes_past_the_thousand_a_list_holds(mock_store: CosmosStore) -> None:
    documents = [
        {"_id": f"ps_{i:032x}", "prompt_text": f"p{i}", "inputs": {}, "parameters": {}}
        for i in range(1205)
    ]
    now = datetime.now(UTC)
    mock_store.db["prompts"].insert_many([{**d, "created_at": now} for d in documents])
    ids = [p.id for p in mock_store.iter_prompts(batch_size=1000)]
    assert len(ids) == len(set(ids)) == 1205  # ties on created_at are broken by _id


# -- logging ------------------------------------------------------------------------------------


def test_each_database_operation_logs_one_debug_line(mock_store: CosmosStore, caplog: Any) -> None:
    import logging

    prompt = mock_store.create_prompt("A robot arm stacks blocks", {}, {})
    caplog.set_level(logging.DEBUG, logger="cosmos_mongo")
    mock_store.get_prompt(prompt.id)
    lines = [r for r in caplog.records if r.name == "cosmos_mongo"]
    assert len(lines) == 1 and lines[0].levelname == "DEBUG"
    assert lines[0].getMessage().startswith("prompts.find_one ") and "ms" in lines[0].getMessage()
    assert "A robot arm" not in caplog.text  # names and times, never values


def test_enhancer_calls_and_retries_log_at_info_and_batches_at_debug(
    mock_store: CosmosStore, caplog: Any, tmp_path: Path
) -> None:
    import logging

    from tests.predecessor_db import sample
    from tests.test_faults import DroppingDatabase

    caplog.set_level(logging.DEBUG, logger="cosmos_mongo")
    prompt = mock_store.create_prompt("A robot arm stacks blocks", {}, {})
    mock_store.enhance_prompt(prompt.id)
    CosmosStore(DroppingDatabase(mock_store.db, drop_on={1})).get_prompt(prompt.id)
    mock_store.import_sqlite(sample(tmp_path / "cosmos.db"), batch_size=2)
    messages = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any(m.startswith("enhancer template-v1 answered in") for m in messages)
    assert any("connection dropped (AutoReconnect); sending it again" in m for m in messages)
    batches = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert not any(m.startswith("import-sqlite:") for m in messages)  # -v: a few lines piped
    assert any(m.startswith("import-sqlite: prompts 2/") for m in batches)


def test_cli_verbose_flags_turn_the_logger_on(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cosmos_mongo.cli import cli

    base = ["--data-dir", str(tmp_path)]
    quiet = CliRunner().invoke(cli, [*base, "prompt", "list"])
    debug = CliRunner().invoke(cli, [*base, "-vv", "prompt", "list"])
    assert "cosmos_mongo DEBUG" not in quiet.stderr
    assert "cosmos_mongo DEBUG prompts.find " in debug.stderr


def test_the_async_importer_reads_its_file_off_the_event_loop(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import threading

    import mongomock
    from mongomock_motor import AsyncMongoMockClient

    from cosmos_mongo import importer
    from tests.predecessor_db import sample

    threads: list[int] = []

    class Watched:
        """The SQLite connection and its cursors, noting the thread of every read."""

        def __init__(self, target: Any) -> None:
            self._target = target

        def __getattr__(self, name: str) -> Any:
            attribute = getattr(self._target, name)
            if not callable(attribute):
                return attribute

            def call(*args: Any, **kwargs: Any) -> Any:
                if name != "close":  # closing reads nothing
                    threads.append(threading.get_ident())
                result = attribute(*args, **kwargs)
                return Watched(result) if name == "execute" else result

            return call

    opened = importer._open
    monkeypatch.setattr(importer, "_open", lambda path: Watched(opened(path)))
    source = sample(tmp_path / "cosmos.db")
    client = mongomock.MongoClient(tz_aware=True)
    store = AsyncCosmosStore(AsyncMongoMockClient(mock_mongo_client=client)["cosmos"])

    async def run() -> tuple[Any, int]:
        report = await store.import_sqlite(source, batch_size=2)
        return report, threading.get_ident()

    report, loop_thread = asyncio.run(run())
    assert report.prompts.imported > 0 and threads
    assert loop_thread not in threads  # every read ran on a worker thread


def test_a_completed_enhance_run_has_typed_outputs(mock_store: CosmosStore) -> None:
    from cosmos_mongo import EnhancementOutputs

    prompt = mock_store.create_prompt("A robot arm stacks blocks", {}, {})
    done = mock_store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Rewritten.")
    typed = mock_store.get_run(done.run_id).enhancement
    assert isinstance(typed, EnhancementOutputs) and typed.in_place
    assert typed.enhanced_text == "Rewritten." and typed.enhancement_model == "agent"
    transfer = mock_store.create_run(prompt.id, {})
    assert transfer.enhancement is None
