"""Integrity at the edges: answers agree with the store under ties, races, deletion and misuse.

Each race is injected deterministically: a slow enhancer that does another writer's work while
the enhancement waits on it, or a fault hook on the counting proxy that runs a competing call
just before one of the workflow's writes. The multi-process versions live in
``test_integrity_processes.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cosmos_mongo import ConflictError, CosmosStore, PromptNotFoundError
from cosmos_mongo import enhancement as enhancement_module
from cosmos_mongo import legacy as legacy_module
from cosmos_mongo import workflows as workflows_module
from cosmos_mongo.models import new_prompt_id, new_run_id
from tests.conftest import Backend
from tests.test_contract import CountingDatabase
from tests.test_enhancement import store_on

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


# -- races, injected deterministically --------------------------------------------------------


class Meddling:
    """An enhancer that lets another writer act while the enhancement waits on it."""

    model = "meddling-llm"

    def __init__(self, action: Callable[[], Any]) -> None:
        self.action = action
        self.error: BaseException | None = None

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        try:
            self.action()
        except BaseException as exc:  # reported to the test, not to the workflow
            self.error = exc
        return "A robot arm stacks three wooden blocks, slowly, in warm light."

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        return self.enhance(prompt_text, inputs)


def other_writer(backend: Backend) -> CosmosStore:
    """A second, synchronous store over the same data: the writer that races the call."""
    return CosmosStore(backend.raw)


def assert_consistent(backend: Backend) -> None:
    report = other_writer(backend).verify(stale_after=NOW)
    assert report.ok, report


@pytest.mark.parametrize("create_new", [True, False])
def test_delete_during_enhance_refuses_without_force(backend: Backend, create_new: bool) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhancer = Meddling(lambda: side.delete_prompt(prompt.id))
    result = store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=create_new)
    assert isinstance(enhancer.error, ConflictError)
    assert enhancer.error.run_ids == [result.run_id] and "force=True" in str(enhancer.error)
    assert backend.store.get_run(result.run_id).status == "completed"
    assert_consistent(backend)


@pytest.mark.parametrize("create_new", [True, False])
def test_forced_delete_during_enhance_makes_the_enhancement_fail_cleanly(
    backend: Backend, create_new: bool
) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhancer = Meddling(lambda: side.delete_prompt(prompt.id, force=True))
    with pytest.raises(ConflictError, match="deleted") as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=create_new)
    assert enhancer.error is None
    assert "marked failed" not in str(caught.value)
    assert backend.snapshot() == {"prompts": [], "runs": []}  # no orphan prompt, no run


def test_repair_during_a_live_enhancement_makes_the_call_fail(backend: Backend) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhancer = Meddling(lambda: side.repair(stale_after=NOW))
    prompts_before = backend.snapshot()["prompts"]
    with pytest.raises(ConflictError, match="settled") as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=False)
    run = backend.store.get_run(caught.value.run_id)
    assert run.status == "failed" and "rolled back by repair" in run.error_message
    assert backend.snapshot()["prompts"] == prompts_before
    assert_consistent(backend)


def test_a_run_created_during_an_in_place_enhancement_stops_the_overwrite(
    backend: Backend,
) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    transfer: list[Any] = []
    enhancer = Meddling(lambda: transfer.append(side.create_run(prompt.id, {})))
    with pytest.raises(ConflictError, match="force_overwrite=True") as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=False)
    assert transfer[0].id in caught.value.run_ids
    assert backend.store.get_prompt(prompt.id).prompt_text == "A robot arm stacks blocks"
    enhance_run = backend.store.get_enhancement_history(prompt.id)[0]
    assert enhance_run.status == "failed" and "refused" in enhance_run.error_message
    assert_consistent(backend)


class Interleaving(CountingDatabase):
    """Runs ``action`` once, just before the workflow's call of ``method`` on ``collection``."""

    def __init__(self, database: Any, collection: str, method: str, action: Callable[[], Any]):
        super().__init__(database)
        self.trigger, self.action = (collection, method), action
        self.fired = False

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if (name, method) == self.trigger and not self.fired:
            self.fired = True
            self.action()
        return super().call(name, method, target, args, kwargs)


SYNC_BACKENDS = ["mongomock", "embedded"]


@pytest.fixture(params=SYNC_BACKENDS)
def sync_backend(request: pytest.FixtureRequest, tmp_path: Any, runner: Any) -> Any:
    from tests.conftest import _open_backend

    yield from _open_backend(request.param, tmp_path, runner)


def test_create_run_during_delete_prompt_leaves_no_orphan(sync_backend: Backend) -> None:
    store = sync_backend.store
    # create_run's insert lands between the prompt's deletion and the runs' deletion
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    attempts: list[BaseException] = []

    def create() -> None:
        try:
            store.create_run(prompt.id, {})
        except PromptNotFoundError as exc:
            attempts.append(exc)

    racing = CosmosStore(Interleaving(sync_backend.raw, "runs", "delete_many", create))
    racing.delete_prompt(prompt.id)
    assert len(attempts) == 1
    # delete_prompt runs between create_run's check and its insert
    other = store.create_prompt("Another prompt", {}, {})
    racing = CosmosStore(
        Interleaving(sync_backend.raw, "runs", "insert_one", lambda: store.delete_prompt(other.id))
    )
    with pytest.raises(PromptNotFoundError):
        racing.create_run(other.id, {})
    assert sync_backend.snapshot() == {"prompts": [], "runs": []}
    assert_consistent(sync_backend)


def test_repair_finishing_the_same_enhancement_leaves_a_true_answer(
    sync_backend: Backend,
) -> None:
    store = sync_backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    for create_new, method in ((True, "insert_one"), (False, "update_one")):
        racing = CosmosStore(
            Interleaving(sync_backend.raw, "prompts", method, lambda: store.repair(stale_after=NOW))
        )
        result = racing.enhance_prompt(
            prompt.id, create_new=create_new, force_overwrite=True, enhanced_text="Agent text."
        )
        run = store.get_run(result.run_id)
        assert run.status == "completed" and run.outputs["enhanced_text"] == "Agent text."
        assert store.get_prompt(result.enhanced_prompt_id).prompt_text == "Agent text."
    assert_consistent(sync_backend)


def test_deleting_the_run_midway_undoes_the_prompt_write(sync_backend: Backend) -> None:
    store = sync_backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    for create_new in (True, False):
        before = sync_backend.snapshot()

        def delete_the_run() -> None:
            running = store.list_runs(model_type="enhance", status="running")
            store.delete_run(running[0].id)

        racing = CosmosStore(Interleaving(sync_backend.raw, "runs", "update_one", delete_the_run))
        with pytest.raises(ConflictError, match="prompt write was undone"):
            racing.enhance_prompt(prompt.id, create_new=create_new, enhanced_text="Agent text.")
        assert without_updated_at(sync_backend.snapshot()) == without_updated_at(before)


def without_updated_at(snapshot: dict[str, list[dict[str, Any]]]) -> Any:
    """A restored prompt is as it was, but for the time of the restoring write."""
    return {
        name: [{k: v for k, v in doc.items() if k != "updated_at"} for doc in docs]
        for name, docs in snapshot.items()
    }


# -- legacy data answers the same before and after migrate ------------------------------------


def insert_plan_shape(raw: Any) -> dict[str, str]:
    """The plan's exact legacy shape: runs that lack the model name (no outputs model, no
    execution_config model) while the prompts still carry ``enhancement_model``."""
    from tests.integration.legacy_data import insert_legacy, pid, prompt, rid, run

    ids = insert_legacy(raw)
    raw["prompts"].insert_one(
        prompt(
            20,
            "A crane lifts steel beams over a busy construction site at dawn",
            70,
            name="crane",
            enhanced=True,
            enhancement_model="pixtral-legacy",
            enhanced_at="2024-01-01T13:10:00Z",
            last_enhancement_run_id=rid(20),
        )
    )
    legacy_run = run(
        20,
        pid(20),
        69,
        {
            "enhanced_text": "A crane lifts steel beams over a busy construction site at dawn",
            "original_prompt_id": pid(20),
            "enhanced_prompt_id": pid(20),
        },
        "unused",
    )
    legacy_run["execution_config"] = {}
    raw["runs"].insert_one(legacy_run)
    return {**ids, "G": pid(20)}


def every_answer(store: Any, ids: dict[str, str]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for name, prompt_id in sorted(ids.items()):
        details = store.get_enhancement_details(prompt_id)
        original = store.get_original_prompt(prompt_id)
        lineage = store.get_lineage(prompt_id)
        answers[name] = {
            "details": None
            if details is None
            else details.model_dump(exclude={"run_id"} if details.run_id is None else set()),
            "original": None if original is None else original.id,
            "history": [run.id for run in store.get_enhancement_history(prompt_id)],
            "ancestors": [(e.parent_id, e.child_id) for e in lineage.ancestors],
            "descendants": [(e.parent_id, e.child_id) for e in lineage.descendants],
        }
    answers["enhanced"] = [p.id for p in store.list_enhanced_prompts()]
    return answers


def test_legacy_data_answers_the_same_before_and_after_migrate(backend: Backend) -> None:
    ids = insert_plan_shape(backend.raw)
    store = backend.store
    g = store.get_enhancement_details(ids["G"])
    assert g.enhancement_model == "pixtral-legacy"  # the run lacks it; the prompt's key knows
    before = every_answer(store, ids)
    store.migrate(dry_run=False)
    after = every_answer(store, ids)
    # Run-less legacy prompts gain a run (and so a run id, and a history entry for them and
    # for D's parent E): that is all.
    for name in ("D", "E", "F"):
        for answers in (before, after):
            answers[name].pop("history")
            if answers[name]["details"] is not None:
                answers[name]["details"].pop("run_id", None)
    assert after == before
    assert store.verify().ok, store.verify()


def test_enhancing_a_legacy_prompt_in_place_keeps_what_its_keys_knew(backend: Backend) -> None:
    ids = insert_plan_shape(backend.raw)
    store = backend.store
    legacy_run = store.get_enhancement_details(ids["G"]).run_id
    store.enhance_prompt(ids["G"], create_new=False, enhanced_text="A crane at dawn, rewritten.")
    stored = backend.raw["prompts"].find_one({"_id": ids["G"]})
    assert set(stored["parameters"]) == {"name", "enhanced"}  # the stale keys are gone
    old = store.get_run(legacy_run)
    assert old.outputs["enhancement_model"] == "pixtral-legacy"  # moved onto the legacy run
    store.migrate(dry_run=False)
    assert store.verify().ok, store.verify()
    assert store.get_run(legacy_run).outputs["enhancement_model"] == "pixtral-legacy"
