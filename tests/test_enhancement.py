"""Enhancement under failure: dead enhancers, timeouts, races, crashes between writes, reverts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import (
    AsyncCosmosStore,
    ConflictError,
    CosmosStore,
    InvalidInputError,
    PromptNotFoundError,
    RunNotFoundError,
)
from cosmos_mongo.config import Settings
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.enhancers import OpenAICompatibleEnhancer, TemplateEnhancer
from cosmos_mongo.errors import EnhancementError
from cosmos_mongo.models import new_run_id
from tests.conftest import Backend
from tests.helpers.writes import WRITE_METHODS
from tests.test_contract import CountingDatabase

NOW = timedelta(0)  # stale_after=0: everything interrupted counts as stale


class FailingEnhancer:
    model = "broken-llm"

    def __init__(self, reply: Any = None, error: Exception | None = None) -> None:
        self.reply, self.error = reply, error

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> Any:
        return self.enhance(prompt_text, inputs)


def store_on(backend: Backend, enhancer: Any, timeout: float = 180.0) -> Any:
    """A store of the backend's flavour over the same data, with another enhancer."""
    return backend.over(enhancer=enhancer, settings=Settings(enhancement_timeout=timeout))


@pytest.mark.parametrize(
    ("enhancer", "message"),
    [
        (FailingEnhancer(error=ConnectionError("connection refused")), "connection refused"),
        (FailingEnhancer(reply=""), "empty text"),
        (FailingEnhancer(reply="**Caption:** ``` ```"), "empty text"),
        (FailingEnhancer(reply=None), "returned no text"),
        (FailingEnhancer(reply=42), "returned no text"),
    ],
)
def test_a_dead_enhancer_marks_the_run_failed_and_leaves_prompts_untouched(
    backend: Backend, enhancer: Any, message: str
) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    prompts_before = backend.snapshot()["prompts"]
    for create_new in (True, False):
        with pytest.raises(EnhancementError, match=message) as caught:
            store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=create_new)
        run = backend.store.get_run(caught.value.run_id)
        assert (run.status, run.model_type, run.prompt_id) == ("failed", "enhance", prompt.id)
        assert message in run.error_message and run.completed_at is not None
        assert backend.snapshot()["prompts"] == prompts_before


def test_a_hanging_enhancer_times_out_sync(tmp_path: Path) -> None:
    release = threading.Event()

    class Hanging(FailingEnhancer):
        def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> Any:
            release.wait(30)
            return "too late"

    with open_embedded(tmp_path) as database:
        store = CosmosStore(
            database, enhancer=Hanging(), settings=Settings(enhancement_timeout=0.2)
        )
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        try:
            with pytest.raises(EnhancementError, match=r"no answer within 0\.2 s") as caught:
                store.enhance_prompt(prompt.id)
        finally:
            release.set()
        assert store.get_run(caught.value.run_id).status == "failed"
        assert store.list_prompts() == [prompt]


def test_a_hanging_enhancer_times_out_async() -> None:
    class Hanging(FailingEnhancer):
        async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> Any:
            await asyncio.Event().wait()

    async def scenario() -> None:
        db = AsyncMongoMockClient(mock_mongo_client=mongomock.MongoClient(tz_aware=True))["c"]
        store = AsyncCosmosStore(db, enhancer=Hanging(), settings=Settings(enhancement_timeout=0.2))
        prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
        with pytest.raises(EnhancementError, match="no answer") as caught:
            await store.enhance_prompt(prompt.id, create_new=False)
        assert (await store.get_run(caught.value.run_id)).status == "failed"  # type: ignore[union-attr]
        assert (await store.get_prompt(prompt.id)) == prompt

    asyncio.run(scenario())


def test_overwrite_refuses_when_the_prompt_has_other_runs(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    transfer = store.create_run(prompt.id, {}, initial_status="completed")
    before = backend.snapshot()
    with pytest.raises(ConflictError, match="force_overwrite=True") as caught:
        store.enhance_prompt(prompt.id, create_new=False)
    assert transfer.id in str(caught.value) and "create_new=True" in str(caught.value)
    assert backend.snapshot() == before  # refused before anything was written
    forced = store.enhance_prompt(prompt.id, create_new=False, force_overwrite=True)
    assert store.get_prompt(prompt.id).prompt_text == forced.enhanced_text
    created = store.enhance_prompt(prompt.id)  # create_new is always allowed
    assert created.enhanced_prompt_id != prompt.id


def test_enhance_rejects_bad_arguments_before_writing(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    before = backend.snapshot()
    bad_calls = [
        lambda: store.enhance_prompt({"$ne": None}),
        lambda: store.enhance_prompt(prompt.id, create_new="yes"),
        lambda: store.enhance_prompt(prompt.id, force_overwrite=1),
        lambda: store.enhance_prompt(prompt.id, enhanced_text="   "),
        lambda: store.enhance_prompt(prompt.id, enhanced_text="**Caption:**"),
        lambda: store.enhance_prompt(prompt.id, enhanced_text="word " * 251),
        lambda: store.enhance_prompt(prompt.id, enhanced_text=["a list"]),
        lambda: store.enhance_prompt(prompt.id, enhancement_model={"$gt": ""}),
        lambda: store.enhance_prompt(prompt.id, enhancement_model="some-other-llm"),
        lambda: store.revert_enhancement("rs_x"),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidInputError):
            call()
    with pytest.raises(PromptNotFoundError):
        store.enhance_prompt("ps_" + "0" * 32)
    assert backend.snapshot() == before


def test_a_model_name_reaches_an_openai_compatible_enhancer() -> None:
    enhancer = OpenAICompatibleEnhancer("http://127.0.0.1:9/v1", "llama-3", api_key="k")
    other = enhancer.with_model("pixtral-12b")
    assert (other.model, other.base_url, other.vision) == ("pixtral-12b", enhancer.base_url, True)
    assert enhancer.model == "llama-3"


# -- concurrent overwrites: a compare-and-set on the text being replaced ----------------------


def test_concurrent_overwrites_in_threads_lose_no_update(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=30)

    class Racing(FailingEnhancer):
        model = "racer"

        def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            barrier.wait()  # both have read the same text before either writes
            return f"Rewritten by {threading.current_thread().name}."

    with open_embedded(tmp_path) as database:
        store = CosmosStore(database, enhancer=Racing())
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        outcomes: dict[str, Any] = {}

        def attempt(name: str) -> None:
            try:
                outcomes[name] = store.enhance_prompt(prompt.id, create_new=False)
            except ConflictError as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=attempt, args=(n,), name=n) for n in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert_one_winner(store, prompt.id, list(outcomes.values()))


def test_concurrent_overwrites_in_tasks_lose_no_update(async_backend: Backend) -> None:
    backend = async_backend
    inner = backend.store.async_store

    class Racing(FailingEnhancer):
        model = "racer"

        def __init__(self) -> None:
            super().__init__()
            self.barrier = asyncio.Barrier(2)
            self.count = 0

        async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
            self.count += 1
            mine = self.count
            await asyncio.wait_for(self.barrier.wait(), 30)
            return f"Rewritten by task {mine}."

    async def race() -> list[Any]:
        store = AsyncCosmosStore(inner.db, enhancer=Racing())
        prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
        outcomes = await asyncio.gather(
            store.enhance_prompt(prompt.id, create_new=False),
            store.enhance_prompt(prompt.id, create_new=False),
            return_exceptions=True,
        )
        return [prompt.id, *outcomes]

    prompt_id, *outcomes = backend.store.runner.run(race())
    assert_one_winner(backend.store, prompt_id, outcomes)


def assert_one_winner(store: Any, prompt_id: str, outcomes: list[Any]) -> None:
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert store.get_prompt(prompt_id).prompt_text == winners[0].enhanced_text
    runs = {run.status: run for run in store.get_enhancement_history(prompt_id)}
    assert set(runs) == {"completed", "failed"}
    assert runs["completed"].id == winners[0].run_id
    assert "changed while it was being enhanced" in runs["failed"].error_message


# -- crash safety: a crash injected before each write --------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing in the library may catch it."""


class CrashingDatabase(CountingDatabase):
    WRITES = WRITE_METHODS

    def __init__(self, database: Any, crash_at: int) -> None:
        super().__init__(database)
        self.crash_at = crash_at

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method in self.WRITES:
            writes = sum(1 for _, m in self.calls if m in self.WRITES)
            if writes + 1 == self.crash_at:
                raise Crash(f"crash before write {self.crash_at}")
        return super().call(name, method, target, args, kwargs)


SCENARIOS = {
    "create_new via enhancer": ({"create_new": True}, 4),
    "overwrite via enhancer": ({"create_new": False}, 4),
    "create_new with agent text": ({"create_new": True, "enhanced_text": "Agent text."}, 3),
    "overwrite with agent text": ({"create_new": False, "enhanced_text": "Agent text."}, 3),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_crash_before_any_write_is_reported_by_verify_and_settled_by_repair(
    tmp_path: Path, scenario: str
) -> None:
    arguments, writes = SCENARIOS[scenario]
    for crash_at in range(1, writes + 2):
        with open_embedded(tmp_path / f"{scenario}-{crash_at}") as database:
            store = CosmosStore(database)
            prompt = store.create_prompt(
                "A robot arm stacks blocks", {"video": "v.mp4"}, {"name": "r"}
            )
            crashing = CosmosStore(CrashingDatabase(database, crash_at))
            try:
                result = crashing.enhance_prompt(prompt.id, **arguments)
            except Crash:
                result = None
            assert (result is None) == (crash_at <= writes), crash_at
            report = store.verify(stale_after=NOW)
            interrupted = 1 < crash_at <= writes
            assert report.ok == (not interrupted), (crash_at, report)
            repaired = store.repair(stale_after=NOW)
            assert store.verify(stale_after=NOW).ok, (crash_at, repaired)
            assert_settled(
                store, prompt, arguments, text_recorded=crash_at > 2 or "enhanced_text" in arguments
            )


def assert_settled(
    store: CosmosStore, prompt: Any, arguments: dict[str, Any], text_recorded: bool
) -> None:
    """Nothing lost: a recorded rewrite is in place and its run completed; else all as before."""
    runs = store.get_enhancement_history(prompt.id)
    assert len(runs) <= 1
    if not runs:
        assert store.list_prompts() == [prompt]
        return
    run = runs[0]
    current = store.get_prompt(prompt.id)
    if text_recorded:
        assert run.status == "completed", run
        text = run.outputs["enhanced_text"]
        if arguments["create_new"]:
            assert current == prompt
            assert store.get_prompt(run.outputs["enhanced_prompt_id"]).prompt_text == text
        else:
            assert current.prompt_text == text and current.enhanced
    else:
        assert run.status == "failed" and "rolled back by repair" in run.error_message
        assert store.list_prompts() == [prompt]


def test_repair_leaves_enhancements_younger_than_stale_after_alone(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        with pytest.raises(Crash):
            CosmosStore(CrashingDatabase(database, 3)).enhance_prompt(prompt.id)
        assert store.verify().ok  # may still be in progress elsewhere
        assert store.repair().completed == []
        assert store.repair(stale_after=NOW).completed != []


# -- revert ------------------------------------------------------------------------------------


def test_revert_restores_the_text_and_the_flag(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {"name": "robot"})
    first = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="First rewrite.")
    second = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Second rewrite.")
    with pytest.raises(ConflictError, match="changed after"):
        store.revert_enhancement(first.run_id)  # a later enhancement must go first
    assert store.revert_enhancement(second.run_id).prompt_text == "First rewrite."
    assert store.get_prompt(prompt.id).enhanced
    restored = store.revert_enhancement(first.run_id)
    assert restored.prompt_text == "A robot arm stacks blocks"
    assert restored.parameters == {"name": "robot"}  # never enhanced before: flag removed
    reverted = store.get_run(first.run_id)
    assert reverted.status == "cancelled" and "reverted_at" in reverted.outputs
    assert store.get_enhancement_details(prompt.id) is None
    assert store.verify().ok


def test_revert_refuses_what_it_cannot_restore(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    created = store.enhance_prompt(prompt.id)
    with pytest.raises(ConflictError, match="delete"):
        store.revert_enhancement(created.run_id)
    overwrite = store.enhance_prompt(prompt.id, create_new=False, force_overwrite=True)
    store.update_prompt(prompt.id, prompt_text="Edited by hand afterwards")
    with pytest.raises(ConflictError, match="changed after"):
        store.revert_enhancement(overwrite.run_id)
    transfer = store.create_run(prompt.id, {})
    with pytest.raises(ConflictError, match="not an enhancement"):
        store.revert_enhancement(transfer.id)
    with pytest.raises(RunNotFoundError):
        store.revert_enhancement(new_run_id())
    assert store.get_prompt(prompt.id).prompt_text == "Edited by hand afterwards"


@pytest.mark.parametrize("crash_at", [2, 3])
def test_an_interrupted_revert_is_finished_by_repair(tmp_path: Path, crash_at: int) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        done = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Rewritten.")
        with pytest.raises(Crash):
            CosmosStore(CrashingDatabase(database, crash_at)).revert_enhancement(done.run_id)
        assert not store.verify(stale_after=NOW).ok
        assert store.repair(stale_after=NOW).reverts_finished == [done.run_id]
        assert store.get_prompt(prompt.id).prompt_text == "A robot arm stacks blocks"
        assert store.get_run(done.run_id).status == "cancelled"
        assert store.verify(stale_after=NOW).ok


def test_the_default_enhancer_is_the_offline_template(
    mock_store: CosmosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("COSMOS_MONGO_ENHANCER", "COSMOS_MONGO_ENHANCER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(CosmosStore(mock_store.db).enhancer, TemplateEnhancer)
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_MODEL", "pixtral-12b")
    chosen = CosmosStore(mock_store.db).enhancer
    assert isinstance(chosen, OpenAICompatibleEnhancer) and chosen.model == "pixtral-12b"
    monkeypatch.delenv("COSMOS_MONGO_ENHANCER_MODEL")
    with pytest.raises(InvalidInputError, match="COSMOS_MONGO_ENHANCER_MODEL"):
        CosmosStore(mock_store.db)


def test_deleting_a_prompt_keeps_the_provenance_of_prompts_enhanced_from_it(
    backend: Backend,
) -> None:
    store = backend.store
    parent = store.create_prompt("A robot arm stacks blocks", {}, {})
    child = store.enhance_prompt(parent.id, enhanced_text="Child text.")
    grandchild = store.enhance_prompt(child.enhanced_prompt_id, enhanced_text="Grandchild text.")
    transfer = store.create_run(child.enhanced_prompt_id, {})
    details_before = store.get_enhancement_details(grandchild.enhanced_prompt_id)
    history_before = store.get_enhancement_history(grandchild.enhanced_prompt_id)
    preview = store.preview_prompt_deletion(child.enhanced_prompt_id)
    assert preview.derived_prompt_ids == [grandchild.enhanced_prompt_id]
    assert preview.kept_run_ids == [grandchild.run_id]
    assert set(preview.run_ids) == {child.run_id, transfer.id}
    result = store.delete_prompt(child.enhanced_prompt_id)
    assert (result.deleted_runs, result.kept_run_ids) == (2, [grandchild.run_id])
    assert store.verify().ok, store.verify()  # kept provenance is valid
    # The grandchild's record answers as before; its original is simply gone.
    assert store.get_enhancement_details(grandchild.enhanced_prompt_id) == details_before
    assert store.get_enhancement_history(grandchild.enhanced_prompt_id) == history_before
    assert store.get_original_prompt(grandchild.enhanced_prompt_id) is None
    lineage = store.get_lineage(grandchild.enhanced_prompt_id)
    assert lineage.missing_prompt_ids == [child.enhanced_prompt_id]
    assert (
        store.get_run(grandchild.run_id).outputs["original_prompt_id"] == child.enhanced_prompt_id
    )
    # The parent's run that produced the deleted child went with it.
    assert store.get_enhancement_history(parent.id) == []


def test_an_enhancement_on_a_read_only_store_raises_read_only_error_and_writes_nothing(
    backend: Backend,
) -> None:
    from cosmos_mongo import ReadOnlyError

    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    before = backend.snapshot()
    read_only = backend.over(settings=Settings(read_only=True))
    with pytest.raises(ReadOnlyError, match="read-only"):
        read_only.enhance_prompt(prompt.id, enhanced_text="A robot arm stacks three blocks.")
    assert backend.snapshot() == before
