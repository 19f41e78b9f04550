"""Adopting the library: async opening, docstrings an IDE shows, exports, a lean core."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

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
