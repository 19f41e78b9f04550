"""Integrity at the edges: answers agree with the store under ties, races, deletion and misuse.

Each race is injected deterministically: a slow enhancer that does another writer's work while
the enhancement waits on it, or a fault hook on the counting proxy that runs a competing call
just before one of the workflow's writes. The multi-process versions live in
``test_integrity_processes.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from cosmos_mongo import (
    CosmosStore,
)
from cosmos_mongo import enhancement as enhancement_module
from cosmos_mongo import legacy as legacy_module
from cosmos_mongo import workflows as workflows_module
from cosmos_mongo.models import new_prompt_id, new_run_id
from tests.conftest import Backend

NOW = timedelta(0)
ID_PATTERN = re.compile(r"(ps|rs)_[0-9a-f]{32}")


# -- order: time-ordered ids, ties broken by _id ----------------------------------------------


def test_new_ids_are_time_ordered_and_strictly_increasing() -> None:
    ids = [new_run_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(ID_PATTERN.fullmatch(i) for i in ids)
    millis = int(new_prompt_id()[3:15], 16)
    assert abs(millis - datetime.now(UTC).timestamp() * 1000) < 60_000


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """Every write in the same millisecond: only ``_id`` can order them."""
    instant = datetime(2026, 11, 24, 12, 0, 0, 123000, tzinfo=UTC)
    for module in (workflows_module, enhancement_module, legacy_module):
        monkeypatch.setattr(module, "utc_now", lambda: instant)
    return instant


def test_writes_in_one_millisecond_come_back_newest_first(
    backend: Backend, frozen_clock: datetime
) -> None:
    store = backend.store
    prompts = [store.create_prompt(f"Prompt number {i}", {}, {}) for i in range(5)]
    assert [p.id for p in store.list_prompts()] == [p.id for p in reversed(prompts)]
    target = prompts[0].id
    runs = [
        store.enhance_prompt(target, create_new=False, enhanced_text=f"Rewrite {i}.")
        for i in range(4)
    ]
    history = store.get_enhancement_history(target)
    assert [run.id for run in history] == [r.run_id for r in reversed(runs)]
    details = store.get_enhancement_details(target)
    assert details.run_id == runs[-1].run_id
    # skip paging over ties is stable: the pages partition the listing
    pages = [store.list_prompts(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [p.id for page in pages for p in page] == [p.id for p in reversed(prompts)]
    transfers = [store.create_run(target, {}) for _ in range(3)]
    assert [r.id for r in store.list_runs(model_type="transfer")] == [
        r.id for r in reversed(transfers)
    ]


def test_history_is_newest_first_200_times_in_a_row(mock_store: CosmosStore) -> None:
    for _ in range(200):
        prompt = mock_store.create_prompt("A robot arm stacks blocks", {}, {})
        first = mock_store.enhance_prompt(prompt.id, enhanced_text="First rewrite.")
        second = mock_store.enhance_prompt(
            prompt.id, create_new=False, enhanced_text="Second rewrite."
        )
        history = mock_store.get_enhancement_history(prompt.id)
        assert [run.id for run in history] == [second.run_id, first.run_id]
