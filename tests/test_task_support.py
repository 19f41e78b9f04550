"""What the MCP server's tasks stand on: ``on_run`` names the recorded run before the enhancer
is asked, ``cancel_enhancement`` settles a running enhancement as repair would, and
``secret`` is one per store."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import ConflictError, CosmosStore, InvalidInputError
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.enhancement import was_cancelled
from tests.conftest import Backend


class Recorder:
    """An enhancer that notes whether the run existed when it was asked."""

    model = "recorder"

    def __init__(self, store: CosmosStore) -> None:
        self.store = store
        self.run_ids: list[str] = []
        self.seen: list[str | None] = []

    def enhance(self, text: str, inputs: Mapping[str, Any]) -> str:
        self.seen.append(getattr(self.store.get_run(self.run_ids[-1]), "status", None))
        return "A robot arm stacks three red blocks on a steel table."

    async def aenhance(self, text: str, inputs: Mapping[str, Any]) -> str:
        raise AssertionError("sync only")


def test_on_run_names_the_recorded_run_before_the_enhancer_is_asked(
    sync_backend: Backend,
) -> None:
    store = sync_backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    recorder = Recorder(store)
    enhancing = CosmosStore(store.db, enhancer=recorder)
    result = enhancing.enhance_prompt(prompt.id, on_run=recorder.run_ids.append)
    assert recorder.run_ids == [result.run_id] and recorder.seen == ["running"]


def test_a_cancelled_enhancement_is_settled_and_its_caller_writes_nothing_more(
    sync_backend: Backend,
) -> None:
    store = sync_backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    recorder = Recorder(store)
    enhancing = CosmosStore(store.db, enhancer=recorder)

    def cancel_at_once(run_id: str) -> None:
        recorder.run_ids.append(run_id)
        settled = store.cancel_enhancement(run_id)
        assert settled is not None and was_cancelled(settled)

    with pytest.raises(ConflictError, match="settled by another writer"):
        enhancing.enhance_prompt(prompt.id, on_run=cancel_at_once)
    [run] = store.list_runs(prompt.id)
    assert run.status == "failed" and "task was cancelled" in (run.error_message or "")
    assert [p.id for p in store.list_prompts()] == [prompt.id]  # no enhanced copy
    assert store.cancel_enhancement(run.id) == run  # settled runs are left as they are


def test_a_store_has_one_secret_per_name_shared_by_every_connection(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as mine, open_embedded(tmp_path) as theirs:
        first, second = CosmosStore(mine), CosmosStore(theirs)
        key = first.secret("mcp_task_ids")
        assert len(key) == 32 and second.secret("mcp_task_ids") == key
        assert first.secret("other") != key
        with pytest.raises(InvalidInputError):
            first.secret("not a name")
