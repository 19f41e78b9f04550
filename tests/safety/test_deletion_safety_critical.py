"""The predecessor's safety invariants, carried over: nobody destroys GPU work or records by
accident. Every test runs on every backend (the real-server ones when MONGODB_URI is set)."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import ConflictError, CosmosStore
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.models import EnhancementResult
from tests.conftest import Backend
from tests.test_contract import CountingDatabase
from tests.test_enhancement import Crash, CrashingDatabase
from tests.test_integrity_processes import finish, start

NOW = timedelta(0)
ORIGINAL = "A robot arm stacks blocks"
STATUSES = ["pending", "running", "uploading", "completed", "failed", "cancelled"]


def test_overwrite_refusal_names_every_run_and_counts_the_active_ones(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    runs = [store.create_run(prompt.id, {}, initial_status=status) for status in STATUSES]
    before = backend.snapshot()
    with pytest.raises(ConflictError) as caught:
        store.enhance_prompt(prompt.id, create_new=False)
    message = str(caught.value)
    assert sorted(caught.value.run_ids) == sorted(run.id for run in runs)
    assert all(run.id in message for run in runs)
    assert "6 run(s)" in message and "2 of them active (running or uploading)" in message
    assert backend.snapshot() == before


def test_the_deletion_preview_is_exactly_what_deletion_does(backend: Backend) -> None:
    store = backend.store
    a = store.create_prompt("A robot arm stacks blocks", {}, {"name": "a"})
    transfer = store.create_run(a.id, {})
    in_place = store.enhance_prompt(a.id, create_new=False, force_overwrite=True)
    child = store.enhance_prompt(a.id, enhanced_text="A child of A.")
    other = store.create_prompt("Waves roll onto a beach", {}, {})
    store.create_run(other.id, {})
    store.enhance_prompt(other.id, enhanced_text="A child of the other prompt.")
    preview = store.preview_prompt_deletion(a.id)
    assert sorted(preview.run_ids) == sorted([transfer.id, in_place.run_id])
    assert preview.kept_run_ids == [child.run_id]
    assert preview.derived_prompt_ids == [child.enhanced_prompt_id]
    before = backend.snapshot()
    result = store.delete_prompt(a.id)
    after = backend.snapshot()
    assert result.deleted_runs == preview.run_count == 2
    gone_runs = {d["_id"] for d in before["runs"]} - {d["_id"] for d in after["runs"]}
    assert gone_runs == set(preview.run_ids)
    assert [d for d in before["prompts"] if d["_id"] != a.id] == after["prompts"]
    assert [d for d in before["runs"] if d["_id"] not in gone_runs] == after["runs"]
    assert store.verify().ok


def test_enhancement_runs_alone_never_block_an_overwrite(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    for i in range(5):
        store.enhance_prompt(prompt.id, create_new=(i % 2 == 0), enhanced_text=f"Rewrite {i}.")
    done = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Final rewrite.")
    assert store.get_prompt(prompt.id).prompt_text == "Final rewrite."
    assert store.get_run(done.run_id).status == "completed"


def test_every_refusal_names_the_ids_and_the_argument_that_proceeds(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    transfer = store.create_run(prompt.id, {})
    with pytest.raises(ConflictError) as overwrite:
        store.enhance_prompt(prompt.id, create_new=False)
    assert prompt.id in str(overwrite.value) and transfer.id in str(overwrite.value)
    assert "force_overwrite=True" in str(overwrite.value)
    created = store.enhance_prompt(prompt.id, enhanced_text="A new prompt.")
    with pytest.raises(ConflictError) as revert:
        store.revert_enhancement(created.run_id)
    assert created.run_id in str(revert.value) and created.enhanced_prompt_id in str(revert.value)
    assert "delete" in str(revert.value)
    # A running enhancement: its run left running, as a live one would be.
    running = store.create_run(prompt.id, {}, model_type="enhance", initial_status="running")
    with pytest.raises(ConflictError) as delete:
        store.delete_prompt(prompt.id)
    assert running.id in str(delete.value) and prompt.id in str(delete.value)
    assert "force=True" in str(delete.value)


def test_a_prompt_with_no_runs_is_overwritten_without_force(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    result = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Rewritten.")
    assert store.get_prompt(prompt.id).prompt_text == "Rewritten." and not result.created_new


def test_an_in_place_enhancement_is_one_self_edge_never_a_parent(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    done = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Rewritten.")
    run = store.get_run(done.run_id)
    assert run.outputs["original_prompt_id"] == run.outputs["enhanced_prompt_id"] == prompt.id
    lineage = store.get_lineage(prompt.id)
    assert lineage.ancestors == [] and lineage.descendants == []
    assert [r.id for r in lineage.in_place] == [done.run_id]
    assert [r.id for r in store.get_enhancement_history(prompt.id)] == [done.run_id]
    assert store.get_original_prompt(prompt.id) is None


def others(snapshot: dict[str, list[dict[str, Any]]], prompt_id: str) -> list[dict[str, Any]]:
    """Every document that belongs to neither ``prompt_id`` nor its runs."""
    return [d for d in snapshot["prompts"] if d["_id"] != prompt_id] + [
        d for d in snapshot["runs"] if d["prompt_id"] != prompt_id
    ]


@pytest.mark.parametrize(
    ("operation", "writes"), [("delete", 3), ("enhance-new", 3), ("enhance-in-place", 3)]
)
def test_a_failure_at_any_write_corrupts_nothing(
    backend: Backend, operation: str, writes: int
) -> None:
    store = backend.store
    bystander = store.create_prompt("Waves roll onto a beach", {}, {})
    store.create_run(bystander.id, {})
    for crash_at in range(1, writes + 1):
        prompt = store.create_prompt(f"A robot arm stacks blocks ({crash_at})", {}, {})
        store.enhance_prompt(prompt.id, enhanced_text="A child.")
        store.create_run(prompt.id, {}, initial_status="completed")
        before = others(backend.snapshot(), prompt.id)
        crashing = backend.over(functools.partial(CrashingDatabase, crash_at=crash_at))
        with pytest.raises(Crash):
            if operation == "delete":
                crashing.delete_prompt(prompt.id)
            else:
                crashing.enhance_prompt(
                    prompt.id,
                    create_new=operation == "enhance-new",
                    force_overwrite=True,
                    enhanced_text="Agent text.",
                )
        report = store.verify(stale_after=NOW)
        half_done = crash_at > 1
        assert report.ok != half_done, (operation, crash_at, report)
        store.repair(stale_after=NOW)
        assert store.verify(stale_after=NOW).ok
        exists = store.get_prompt(prompt.id) is not None
        assert not any("deletion" in run for run in backend.snapshot()["runs"])  # unmarked
        if operation == "delete" and crash_at == writes:  # the prompt went, its runs not yet
            kept = store.list_runs(prompt_id=prompt.id)  # only the child's provenance
            assert not exists and [(r.model_type, r.status) for r in kept] == [
                ("enhance", "completed")
            ]
        else:
            assert exists and len(store.list_runs(prompt_id=prompt.id)) >= 2
        after = others(backend.snapshot(), prompt.id)
        assert [d for d in before if d not in after] == []  # nobody else's document changed


class Atomic(CountingDatabase):
    """One call at a time. A server applies each single-document write atomically; mongomock
    does not across threads (its find_one_and_update reads, then writes), so the thread race
    runs on mongomock through this stand-in for the server's guarantee."""

    def __init__(self, database: Any) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        with self.lock:
            return super().call(name, method, target, args, kwargs)


def won(outcomes: list[Any]) -> set[str]:
    """The run ids of the attempts that completed; every other attempt must have been refused."""
    assert all(isinstance(o, (ConflictError, EnhancementResult)) for o in outcomes), outcomes
    return {o.run_id for o in outcomes if isinstance(o, EnhancementResult)}


def assert_each_replaced_the_one_before(store: Any, prompt_id: str, winners: set[str]) -> None:
    """Each completed run recorded the text it replaced, the prompt holds the last one's text,
    and reverting them newest first restores the original."""
    completed = [r for r in store.get_enhancement_history(prompt_id) if r.status == "completed"]
    assert len(winners) >= 1 and {r.id for r in completed} == winners
    # Following the texts from the original visits every completed run once: no update was
    # lost and none was applied over a text it did not record.
    by_replaced = {r.execution_config["original_prompt_text"]: r for r in completed}
    assert len(by_replaced) == len(completed)
    chain, previous = [], ORIGINAL
    while previous in by_replaced:
        chain.append(by_replaced[previous])
        previous = chain[-1].outputs["enhanced_text"]
    assert len(chain) == len(completed)
    assert store.get_prompt(prompt_id).prompt_text == chain[-1].outputs["enhanced_text"]
    for run in reversed(chain):
        store.revert_enhancement(run.id)
    assert store.get_prompt(prompt_id).prompt_text == ORIGINAL
    assert store.verify(stale_after=NOW).ok


def test_concurrent_forced_overwrites_in_threads_each_record_what_they_replaced(
    sync_backend: Backend,
) -> None:
    barrier = threading.Barrier(4, timeout=30)

    class Racing:
        model = "racer"

        def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            barrier.wait()
            return f"Rewrite by thread {threading.get_ident()}."

        async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            return self.enhance(prompt_text, inputs)

    wrap = Atomic if sync_backend.name == "mongomock" else (lambda database: database)
    store = sync_backend.over(wrap, enhancer=Racing())
    prompt = store.create_prompt(ORIGINAL, {}, {})
    store.create_run(prompt.id, {}, initial_status="running")
    outcomes: list[Any] = []

    def attempt() -> None:
        try:
            outcomes.append(store.enhance_prompt(prompt.id, create_new=False, force_overwrite=True))
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 4
    assert_each_replaced_the_one_before(store, prompt.id, won(outcomes))


def test_concurrent_forced_overwrites_in_tasks_each_record_what_they_replaced(
    async_backend: Backend,
) -> None:
    class Racing:
        model = "racer"

        def __init__(self) -> None:
            self.barrier = asyncio.Barrier(4)
            self.count = 0

        def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            raise AssertionError("the async store calls aenhance")

        async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            self.count += 1
            mine = self.count
            await asyncio.wait_for(self.barrier.wait(), 30)
            return f"Rewrite by task {mine}."

    store = async_backend.over(enhancer=Racing())
    prompt = store.create_prompt(ORIGINAL, {}, {})
    store.create_run(prompt.id, {}, initial_status="running")

    async def race() -> list[Any]:
        attempts = [
            store.async_store.enhance_prompt(prompt.id, create_new=False, force_overwrite=True)
            for _ in range(4)
        ]
        return await asyncio.gather(*attempts, return_exceptions=True)

    outcomes = store.runner.run(race())
    assert_each_replaced_the_one_before(store, prompt.id, won(outcomes))


@pytest.mark.slow
def test_concurrent_forced_overwrites_in_processes_each_record_what_they_replaced(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompt = store.create_prompt(ORIGINAL, {}, {})
        store.create_run(prompt.id, {}, initial_status="running")
        workers = [start("enhance-waiting", str(tmp_path), prompt.id, "forced") for _ in range(3)]
        for worker in workers:  # each has its run, running, and waits for its enhancer
            assert worker.stdout is not None and worker.stdout.readline().strip() == "waiting"
        for worker in workers:  # release them together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outcomes = [json.loads(finish(worker)[-1]) for worker in workers]
        assert all(o["ok"] or o["error"] == "ConflictError" for o in outcomes), outcomes
        winners = {o["run_id"] for o in outcomes if o["ok"]}
        assert_each_replaced_the_one_before(store, prompt.id, winners)
