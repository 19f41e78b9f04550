"""Behaviour of the store, the same on every backend (see ``conftest.backend``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cosmos_mongo import (
    InvalidInputError,
    Prompt,
    PromptNotFoundError,
    Run,
    RunNotFoundError,
)
from cosmos_mongo.models import new_prompt_id, new_run_id
from tests.conftest import Backend

ID = re.compile(r"(ps|rs)_[0-9a-f]{32}")


def make_prompt(
    store: Any, text: str = "A robot arm stacks three blocks", **parameters: Any
) -> Prompt:
    return store.create_prompt(text, {"video": "inputs/robot.mp4"}, parameters)  # type: ignore[no-any-return]


def insert_prompts_at(backend: Backend, count: int) -> list[str]:
    """Insert prompts one second apart (newest last) so ordering tests never meet a tie."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for i in range(count):
        prompt_id = new_prompt_id()
        at = start + timedelta(seconds=i)
        backend.raw["prompts"].insert_one(
            {
                "_id": prompt_id,
                "prompt_text": f"prompt {i}",
                "inputs": {},
                "parameters": {},
                "created_at": at,
                "updated_at": at,
            }
        )
        ids.append(prompt_id)
    return ids


class TestPrompts:
    def test_create_prompt_returns_the_stored_prompt(self, store: Any) -> None:
        prompt = make_prompt(store, name="robot", negative_prompt="blurry")
        assert ID.fullmatch(prompt.id) and prompt.id.startswith("ps_")
        assert prompt.prompt_text == "A robot arm stacks three blocks"
        assert prompt.inputs == {"video": "inputs/robot.mp4"}
        assert prompt.parameters == {"name": "robot", "negative_prompt": "blurry"}
        assert prompt.name == "robot" and not prompt.enhanced
        assert prompt.created_at.tzinfo is not None and prompt.created_at.utcoffset() == timedelta(
            0
        )
        assert store.get_prompt(prompt.id) == prompt

    def test_create_prompt_strips_surrounding_whitespace(self, store: Any) -> None:
        assert make_prompt(store, "  rain at night \n").prompt_text == "rain at night"

    def test_stored_document_has_the_data_contract_shape(self, backend: Backend) -> None:
        prompt = make_prompt(backend.store)
        document = backend.raw["prompts"].find_one({"_id": prompt.id})
        assert set(document) == {
            "_id",
            "prompt_text",
            "inputs",
            "parameters",
            "created_at",
            "updated_at",
        }
        assert isinstance(document["created_at"], datetime)

    def test_get_prompt_returns_none_for_an_unknown_id(self, store: Any) -> None:
        assert store.get_prompt(new_prompt_id()) is None

    def test_list_prompts_is_newest_first_and_pages_with_offset(self, backend: Backend) -> None:
        ids = insert_prompts_at(backend, 7)
        first = backend.store.list_prompts(limit=3)
        second = backend.store.list_prompts(limit=3, offset=3)
        rest = backend.store.list_prompts(limit=3, offset=6)
        assert [p.id for p in first + second + rest] == ids[::-1]
        assert backend.store.list_prompts(offset=100) == []

    def test_search_is_case_insensitive_and_escapes_regex(self, store: Any) -> None:
        robot = make_prompt(store, "A ROBOT arm (v2) stacks blocks")
        make_prompt(store, "Rain on a city street", name="rainy robot.night")
        make_prompt(store, "Waves on a beach")
        assert [p.id for p in store.search_prompts("robot arm (v2)")] == [robot.id]
        assert len(store.search_prompts("robot")) == 2  # text or name
        assert store.search_prompts(".*") == []  # a literal, not a pattern
        assert len(store.search_prompts("robot", limit=1)) == 1

    def test_update_prompt_changes_text_and_merges_parameters(self, store: Any) -> None:
        prompt = make_prompt(store, name="robot", seed=1)
        updated = store.update_prompt(prompt.id, prompt_text="new text", parameters={"seed": 2})
        assert updated.prompt_text == "new text"
        assert updated.parameters == {"name": "robot", "seed": 2}
        assert updated.updated_at >= prompt.updated_at
        assert store.get_prompt(prompt.id) == updated

    def test_update_prompt_of_unknown_id_raises_not_found(self, store: Any) -> None:
        missing = new_prompt_id()
        with pytest.raises(PromptNotFoundError, match=missing):
            store.update_prompt(missing, prompt_text="x")

    def test_update_prompt_with_nothing_to_change_is_rejected(self, store: Any) -> None:
        prompt = make_prompt(store)
        with pytest.raises(InvalidInputError):
            store.update_prompt(prompt.id)

    def test_preview_lists_what_delete_would_remove(self, store: Any) -> None:
        prompt = make_prompt(store)
        done = store.create_run(prompt.id, {}, initial_status="completed")
        running = store.create_run(prompt.id, {}, initial_status="running")
        preview = store.preview_prompt_deletion(prompt.id)
        assert preview.prompt == prompt
        assert preview.run_count == 2
        assert set(preview.run_ids) == {done.id, running.id}
        assert preview.runs_by_status == {"completed": 1, "running": 1}
        assert preview.active_run_ids == [running.id]
        assert store.get_prompt(prompt.id) == prompt  # preview changes nothing

    def test_delete_prompt_removes_its_runs_and_nothing_else(self, store: Any) -> None:
        doomed, kept = make_prompt(store), make_prompt(store, "another")
        store.create_run(doomed.id, {})
        store.create_run(doomed.id, {})
        kept_run = store.create_run(kept.id, {})
        result = store.delete_prompt(doomed.id)
        assert (result.prompt_id, result.deleted_runs) == (doomed.id, 2)
        assert store.get_prompt(doomed.id) is None
        assert store.list_runs(prompt_id=doomed.id) == []
        assert store.list_runs() == [kept_run]

    def test_delete_or_preview_of_unknown_prompt_raises_not_found(self, store: Any) -> None:
        with pytest.raises(PromptNotFoundError):
            store.delete_prompt(new_prompt_id())
        with pytest.raises(PromptNotFoundError):
            store.preview_prompt_deletion(new_prompt_id())


class TestRuns:
    def test_create_run_records_a_pending_transfer_run(self, store: Any) -> None:
        prompt = make_prompt(store)
        run = store.create_run(prompt.id, {"num_steps": 35}, metadata={"host": "gpu-1"})
        assert isinstance(run, Run) and run.id.startswith("rs_") and ID.fullmatch(run.id)
        assert (run.prompt_id, run.model_type, run.status) == (prompt.id, "transfer", "pending")
        assert run.execution_config == {"num_steps": 35}
        assert run.metadata == {"host": "gpu-1"} and run.outputs == {}
        assert run.started_at is None and run.completed_at is None
        assert store.get_run(run.id) == run

    def test_create_run_for_unknown_prompt_raises_and_writes_nothing(
        self, backend: Backend
    ) -> None:
        before = backend.snapshot()
        with pytest.raises(PromptNotFoundError):
            backend.store.create_run(new_prompt_id(), {})
        assert backend.snapshot() == before

    def test_list_runs_filters_by_prompt_type_and_status(self, store: Any) -> None:
        a, b = make_prompt(store), make_prompt(store, "other")
        r1 = store.create_run(a.id, {}, model_type="upscale")
        r2 = store.create_run(a.id, {}, initial_status="completed")
        r3 = store.create_run(b.id, {}, model_type="upscale", initial_status="completed")
        assert {r.id for r in store.list_runs(prompt_id=a.id)} == {r1.id, r2.id}
        assert {r.id for r in store.list_runs(model_type="upscale")} == {r1.id, r3.id}
        assert {r.id for r in store.list_runs(status="completed")} == {r2.id, r3.id}
        assert [r.id for r in store.list_runs(prompt_id=b.id, model_type="upscale")] == [r3.id]
        assert len(store.list_runs(limit=2)) == 2

    def test_status_changes_stamp_start_and_completion(self, store: Any) -> None:
        run = store.create_run(make_prompt(store).id, {})
        running = store.update_run_status(run.id, "running")
        assert running.status == "running" and running.started_at is not None
        done = store.update_run_status(run.id, "completed")
        assert done.completed_at is not None and done.started_at == running.started_at

    def test_update_run_sets_outputs_and_error(self, store: Any) -> None:
        run = store.create_run(make_prompt(store).id, {})
        updated = store.update_run(
            run.id, status="failed", outputs={"video": "out.mp4"}, error_message="GPU lost"
        )
        assert updated.outputs == {"video": "out.mp4"}
        assert (updated.status, updated.error_message) == ("failed", "GPU lost")
        assert store.get_run(run.id) == updated

    def test_update_run_refuses_a_field_it_does_not_name_as_any_function_does(
        self, store: Any
    ) -> None:
        run = store.create_run(make_prompt(store).id, {})
        with pytest.raises(TypeError, match="prompt_id"):
            store.update_run(run.id, prompt_id=new_prompt_id())
        assert store.get_run(run.id) == run

    def test_update_run_changes_only_the_keywords_given_and_none_clears(self, store: Any) -> None:
        run = store.create_run(make_prompt(store).id, {"steps": 3}, metadata={"by": "me"})
        failed = store.update_run(run.id, status="failed", error_message="GPU lost")
        assert (failed.execution_config, failed.metadata) == ({"steps": 3}, {"by": "me"})
        cleared = store.update_run(run.id, error_message=None, metadata=None)
        assert (cleared.status, cleared.error_message, cleared.metadata) == ("failed", None, {})
        with pytest.raises(InvalidInputError, match="at least one field"):
            store.update_run(run.id)
        with pytest.raises(InvalidInputError, match="status"):
            store.update_run(run.id, status="finished")

    @pytest.mark.parametrize("rating", [1, 5])
    def test_set_run_rating_accepts_one_to_five(self, store: Any, rating: int) -> None:
        run = store.create_run(make_prompt(store).id, {})
        assert store.set_run_rating(run.id, rating).rating == rating

    def test_delete_run(self, store: Any) -> None:
        run = store.create_run(make_prompt(store).id, {})
        store.delete_run(run.id)
        assert store.get_run(run.id) is None
        with pytest.raises(RunNotFoundError, match=run.id):
            store.delete_run(run.id)

    def test_run_writes_to_unknown_runs_raise_not_found(self, store: Any) -> None:
        missing = new_run_id()
        for call in (
            lambda: store.update_run_status(missing, "running"),
            lambda: store.set_run_rating(missing, 3),
            lambda: store.update_run(missing, log_path="/tmp/x.log"),
        ):
            with pytest.raises(RunNotFoundError):
                call()


class TestBadInput:
    """Each bad argument raises InvalidInputError naming the field, and writes nothing."""

    BAD_CALLS: dict[str, Any] = {
        "empty text": lambda s, p, r: s.create_prompt("", {}, {}),
        "blank text": lambda s, p, r: s.create_prompt(" \t\n", {}, {}),
        "text too long": lambda s, p, r: s.create_prompt("x" * 10_001, {}, {}),
        "NUL in text": lambda s, p, r: s.create_prompt("a\x00b", {}, {}),
        "text not a string": lambda s, p, r: s.create_prompt(42, {}, {}),
        "inputs not a mapping": lambda s, p, r: s.create_prompt("ok", ["video.mp4"], {}),
        "operator key in parameters": lambda s, p, r: s.create_prompt("ok", {}, {"$set": 1}),
        "dotted key in inputs": lambda s, p, r: s.create_prompt("ok", {"a.b": 1}, {}),
        "legacy key in parameters": lambda s, p, r: s.create_prompt(
            "ok", {}, {"parent_prompt_id": p}
        ),
        "enhanced not a boolean": lambda s, p, r: s.create_prompt("ok", {}, {"enhanced": "yes"}),
        "id as operator dict": lambda s, p, r: s.get_prompt({"$ne": None}),
        "id with operator chars": lambda s, p, r: s.get_prompt("ps_$where"),
        "run id for a prompt": lambda s, p, r: s.get_prompt(r),
        "update with operator id": lambda s, p, r: s.update_prompt({"$gt": ""}, prompt_text="x"),
        "delete with regex id": lambda s, p, r: s.delete_prompt({"$regex": "ps_"}),
        "unknown model type": lambda s, p, r: s.create_run(p, {}, model_type="dream"),
        "unknown status": lambda s, p, r: s.create_run(p, {}, initial_status="done"),
        "status update to unknown": lambda s, p, r: s.update_run_status(r, "finished"),
        "rating zero": lambda s, p, r: s.set_run_rating(r, 0),
        "rating six": lambda s, p, r: s.set_run_rating(r, 6),
        "rating not whole": lambda s, p, r: s.set_run_rating(r, 4.5),
        "rating boolean": lambda s, p, r: s.set_run_rating(r, True),
        "limit zero": lambda s, p, r: s.list_prompts(limit=0),
        "limit too big": lambda s, p, r: s.list_runs(limit=1001),
        "negative offset": lambda s, p, r: s.list_prompts(offset=-1),
        "empty search": lambda s, p, r: s.search_prompts("  "),
        "operator prompt filter": lambda s, p, r: s.list_runs(prompt_id={"$exists": True}),
    }

    @pytest.mark.parametrize("case", sorted(BAD_CALLS))
    def test_bad_argument_raises_invalid_input_and_changes_nothing(
        self, backend: Backend, case: str
    ) -> None:
        prompt = make_prompt(backend.store)
        run = backend.store.create_run(prompt.id, {})
        before = backend.snapshot()
        with pytest.raises(InvalidInputError) as caught:
            self.BAD_CALLS[case](backend.store, prompt.id, run.id)
        assert caught.value.field and caught.value.rule
        assert backend.snapshot() == before


def test_list_prompts_filters_on_the_enhanced_flag(store: Any) -> None:
    plain = make_prompt(store, "A plain prompt")
    flagged = make_prompt(store, "A prompt to enhance")
    store.enhance_prompt(flagged.id, create_new=False, enhanced_text="An enhanced prompt.")
    unflagged = make_prompt(store, "Enhanced, then reverted")
    done = store.enhance_prompt(unflagged.id, create_new=False, enhanced_text="Rewritten.")
    store.revert_enhancement(done.run_id)
    assert [p.id for p in store.list_prompts(enhanced=True)] == [flagged.id]
    assert {p.id for p in store.list_prompts(enhanced=False)} == {plain.id, unflagged.id}
    assert len(store.list_prompts()) == 3
    with pytest.raises(InvalidInputError, match="enhanced"):
        store.list_prompts(enhanced="yes")


@pytest.mark.parametrize("value", [True, False, 1, "true"])
def test_callers_cannot_set_the_enhanced_flag(backend: Any, value: Any) -> None:
    store = backend.store
    with pytest.raises(InvalidInputError, match=r"parameters\.enhanced") as caught:
        store.create_prompt("A robot arm stacks blocks", {}, {"enhanced": value})
    assert caught.value.field == "parameters.enhanced"
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {"name": "robot"})
    before = backend.snapshot()
    with pytest.raises(InvalidInputError, match=r"parameters\.enhanced"):
        store.update_prompt(prompt.id, parameters={"enhanced": value})
    assert backend.snapshot() == before
