"""The predecessor's safety invariants, carried over: nobody destroys GPU work or records by
accident. Every test runs on every backend (the real-server ones when MONGODB_URI is set)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import ConflictError, CosmosStore
from cosmos_mongo.embedded import open_embedded
from tests.conftest import Backend
from tests.test_enhancement import Crash, CrashingDatabase

NOW = timedelta(0)
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


@pytest.mark.parametrize(
    ("operation", "writes"), [("delete", 2), ("enhance-new", 3), ("enhance-in-place", 3)]
)
def test_a_failure_at_any_write_corrupts_nothing(
    tmp_path: Path, operation: str, writes: int
) -> None:
    for crash_at in range(1, writes + 1):
        with open_embedded(tmp_path / f"{operation}-{crash_at}") as database:
            store = CosmosStore(database)
            bystander = store.create_prompt("Waves roll onto a beach", {}, {})
            store.create_run(bystander.id, {})
            prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
            store.enhance_prompt(prompt.id, enhanced_text="A child.")
            store.create_run(prompt.id, {}, initial_status="completed")
            untouched = [d for d in database["runs"].find({}) if d["prompt_id"] == bystander.id]
            crashing = CosmosStore(CrashingDatabase(database, crash_at))
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
            if operation == "delete" and half_done:
                kept = store.list_runs(prompt_id=prompt.id)  # only the child's provenance
                assert not exists and [(r.model_type, r.status) for r in kept] == [
                    ("enhance", "completed")
                ]
            else:
                assert exists and len(store.list_runs(prompt_id=prompt.id)) >= 2
            assert store.get_prompt(bystander.id) == bystander
            assert [d for d in database["runs"].find({}) if d["prompt_id"] == bystander.id] == (
                untouched
            )


def test_concurrent_forced_overwrites_each_record_what_they_replaced(tmp_path: Path) -> None:
    barrier = threading.Barrier(4, timeout=30)

    class Racing:
        model = "racer"

        def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            barrier.wait()
            return f"Rewrite by {threading.get_ident()}."

        async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            return self.enhance(prompt_text, inputs)

    with open_embedded(tmp_path) as database:
        store = CosmosStore(database, enhancer=Racing())
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        store.create_run(prompt.id, {}, initial_status="running")
        outcomes: list[Any] = []

        def attempt() -> None:
            try:
                outcomes.append(
                    store.enhance_prompt(prompt.id, create_new=False, force_overwrite=True)
                )
            except ConflictError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        winners = [o for o in outcomes if not isinstance(o, ConflictError)]
        assert len(outcomes) == 4 and len(winners) >= 1
        completed = [r for r in store.get_enhancement_history(prompt.id) if r.status == "completed"]
        texts = {r.outputs["enhanced_text"] for r in completed}
        assert store.get_prompt(prompt.id).prompt_text in texts
        # Each completed run replaced exactly the text the one before it wrote: following the
        # texts from the original visits every completed run once (no update was lost).
        by_replaced = {r.execution_config["original_prompt_text"]: r for r in completed}
        assert len(by_replaced) == len(completed)
        chain, previous = [], "A robot arm stacks blocks"
        while previous in by_replaced:
            chain.append(by_replaced[previous])
            previous = chain[-1].outputs["enhanced_text"]
        assert len(chain) == len(completed)
        assert store.get_prompt(prompt.id).prompt_text == chain[-1].outputs["enhanced_text"]
        for run in reversed(chain):
            store.revert_enhancement(run.id)
        assert store.get_prompt(prompt.id).prompt_text == "A robot arm stacks blocks"
