"""Data edited by a person in mongosh: reads report it, never fail on it.

Each test plants documents that break the model through ``backend.raw`` (as someone would in
mongosh) beside documents the library wrote, on every backend: listings return the others and
name the bad ids, a read of one bad document is a clear error, ``verify`` names each one, and
the CLI and the MCP tools say so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from mcp import Client

from cosmos_mongo import InvalidDocumentError, Listing, SkippedDocument, enhancement
from cosmos_mongo import cli as cli_module
from cosmos_mongo.cli import cli
from mcp_server import build_server
from tests.conftest import Backend
from tests.test_library import collect


@dataclass
class Planted:
    good_prompt: str
    text_is_a_number: str  # prompt_text: 42, named "robot-42"
    no_created_at: str  # prompt without created_at
    inserted_by_hand: str  # a prompt inserted without _id: an ObjectId, as mongosh gives it
    enhanced_child: str  # an enhanced prompt whose inputs became a string
    good_run: str
    rated_by_hand: str  # rating: 4.5
    dated_by_hand: str  # created_at: "last tuesday"
    enhance_run: str  # the enhance run that made enhanced_child (it fits)

    @property
    def bad_prompts(self) -> dict[str, str]:
        """Every prompt that breaks the model, with the field it breaks."""
        return {
            self.text_is_a_number: "prompt_text",
            self.no_created_at: "created_at",
            self.inserted_by_hand: "_id",
            self.enhanced_child: "inputs",
        }

    @property
    def bad_runs(self) -> dict[str, str]:
        return {self.rated_by_hand: "rating", self.dated_by_hand: "created_at"}


def plant(backend: Backend) -> Planted:
    store, raw = backend.store, backend.raw
    good = store.create_prompt("A robot arm stacks blocks", {}, {"name": "robot"})
    numbered = store.create_prompt("Soon a number", {}, {"name": "robot-42"})
    raw["prompts"].update_one({"_id": numbered.id}, {"$set": {"prompt_text": 42}})
    undated = store.create_prompt("Soon without a date", {}, {})
    raw["prompts"].update_one({"_id": undated.id}, {"$unset": {"created_at": ""}})
    by_hand = raw["prompts"].insert_one(
        {"prompt_text": "Typed in mongosh", "inputs": {}, "parameters": {}, "created_at": 7}
    )
    source = store.create_prompt("A drone over farmland", {}, {})
    enhanced = store.enhance_prompt(source.id, enhanced_text="A drone glides low over farmland.")
    raw["prompts"].update_one(
        {"_id": enhanced.enhanced_prompt_id}, {"$set": {"inputs": "video.mp4"}}
    )
    good_run = store.create_run(good.id, {})
    rated = store.create_run(good.id, {})
    raw["runs"].update_one({"_id": rated.id}, {"$set": {"rating": 4.5}})
    dated = store.create_run(good.id, {})
    raw["runs"].update_one({"_id": dated.id}, {"$set": {"created_at": "last tuesday"}})
    return Planted(
        good_prompt=good.id,
        text_is_a_number=numbered.id,
        no_created_at=undated.id,
        inserted_by_hand=str(by_hand.inserted_id),
        enhanced_child=enhanced.enhanced_prompt_id,
        good_run=good_run.id,
        rated_by_hand=rated.id,
        dated_by_hand=dated.id,
        enhance_run=enhanced.run_id,
    )


def named(skipped: list[SkippedDocument]) -> dict[str, str]:
    return {each.id: each.field for each in skipped}


# -- listings -------------------------------------------------------------------------------------


def test_listings_return_the_fitting_documents_and_name_the_ones_left_out(
    backend: Backend,
) -> None:
    planted = plant(backend)
    store = backend.store

    prompts = store.list_prompts(limit=100)
    assert isinstance(prompts, Listing) and isinstance(prompts, list)
    assert planted.good_prompt in {p.id for p in prompts}
    assert not {p.id for p in prompts} & set(planted.bad_prompts)
    assert named(prompts.skipped) == planted.bad_prompts
    assert all(each.collection == "prompts" for each in prompts.skipped)

    runs = store.list_runs(limit=100)
    assert {r.id for r in runs} == {planted.good_run, planted.enhance_run}
    assert named(runs.skipped) == planted.bad_runs
    rated = next(each for each in runs.skipped if each.id == planted.rated_by_hand)
    assert "integer" in rated.rule and "4.5" in rated.rule

    found = store.search_prompts("robot")
    assert [p.id for p in found] == [planted.good_prompt]
    assert named(found.skipped) == {planted.text_is_a_number: "prompt_text"}

    enhanced = store.list_enhanced_prompts()
    assert list(enhanced) == []
    assert named(enhanced.skipped) == {planted.enhanced_child: "inputs"}

    own_runs = store.list_runs(prompt_id=planted.good_prompt)
    assert [r.id for r in own_runs] == [planted.good_run]
    assert named(own_runs.skipped) == planted.bad_runs


def test_history_leaves_out_an_enhance_run_edited_by_hand(backend: Backend) -> None:
    planted = plant(backend)
    backend.raw["runs"].update_one({"_id": planted.enhance_run}, {"$set": {"rating": "great"}})
    history = backend.store.get_enhancement_history(planted.enhanced_child)
    assert list(history) == []
    assert named(history.skipped) == {planted.enhance_run: "rating"}


def test_iterators_yield_the_fitting_documents_and_log_the_ones_left_out(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    planted = plant(backend)
    with caplog.at_level(logging.WARNING, logger="cosmos_mongo"):
        prompts = collect(backend.store, "iter_prompts")
        runs = collect(backend.store, "iter_runs")
    assert planted.good_prompt in {p.id for p in prompts}
    assert not {p.id for p in prompts} & set(planted.bad_prompts)
    assert {r.id for r in runs} == {planted.good_run, planted.enhance_run}
    logged = " ".join(record.getMessage() for record in caplog.records)
    for document_id in [*planted.bad_prompts, *planted.bad_runs]:
        assert document_id in logged


def test_iteration_pages_past_a_whole_batch_that_does_not_fit(backend: Backend) -> None:
    store = backend.store
    kept = [store.create_prompt(f"Kept {i}", {}, {}).id for i in range(3)]
    broken = [store.create_prompt(f"Broken {i}", {}, {}).id for i in range(3)]
    backend.raw["prompts"].update_many({"_id": {"$in": broken}}, {"$set": {"prompt_text": 1}})
    for batch_size in (1, 2, 3):
        found = [p.id for p in collect(store, "iter_prompts", batch_size=batch_size)]
        assert found == kept[::-1], batch_size


# -- reads of one document ---------------------------------------------------------------------


def test_a_read_of_one_bad_document_names_the_id_the_field_and_the_rule(
    backend: Backend,
) -> None:
    planted = plant(backend)
    store = backend.store
    with pytest.raises(InvalidDocumentError) as prompt_error:
        store.get_prompt(planted.text_is_a_number)
    assert prompt_error.value.document_id == planted.text_is_a_number
    assert prompt_error.value.field == "prompt_text"
    assert "string" in prompt_error.value.rule and "42" in prompt_error.value.rule
    message = str(prompt_error.value)
    assert planted.text_is_a_number in message and "cosmos-mongo verify" in message

    with pytest.raises(InvalidDocumentError) as run_error:
        store.get_run(planted.rated_by_hand)
    assert (run_error.value.collection, run_error.value.field) == ("runs", "rating")
    assert "4.5" in str(run_error.value) and not run_error.value.written

    for read in (
        lambda: store.get_enhancement_details(planted.enhanced_child),
        lambda: store.get_lineage(planted.enhanced_child),
        lambda: store.preview_prompt_deletion(planted.enhanced_child),
    ):
        with pytest.raises(InvalidDocumentError, match=planted.enhanced_child):
            read()
    with pytest.raises(InvalidDocumentError, match="created_at"):
        store.get_prompt(planted.no_created_at)


def test_a_write_whose_answer_does_not_fit_says_the_change_was_stored(backend: Backend) -> None:
    planted = plant(backend)
    with pytest.raises(InvalidDocumentError, match="change was stored") as error:
        backend.store.update_run_status(planted.rated_by_hand, "running")
    assert error.value.written
    assert backend.raw["runs"].find_one({"_id": planted.rated_by_hand})["status"] == "running"


def test_a_prompt_that_does_not_fit_can_still_be_deleted(backend: Backend) -> None:
    planted = plant(backend)
    result = backend.store.delete_prompt(planted.text_is_a_number)
    assert result.prompt_id == planted.text_is_a_number
    assert backend.raw["prompts"].find_one({"_id": planted.text_is_a_number}) is None


def test_lineage_names_the_members_that_do_not_fit(backend: Backend) -> None:
    planted = plant(backend)
    source = backend.raw["runs"].find_one({"_id": planted.enhance_run})["prompt_id"]
    lineage = backend.store.get_lineage(source)
    assert named(lineage.skipped) == {planted.enhanced_child: "inputs"}
    assert planted.enhanced_child not in lineage.prompts
    assert planted.enhanced_child not in lineage.missing_prompt_ids
    assert "does not fit the data model" in lineage.to_mermaid()


# -- verify ------------------------------------------------------------------------------------


def _invalid_by_id(report: Any) -> dict[str, str]:
    found = {}
    for line in report.invalid_documents:
        head, _, problems = line.partition(": ")
        _, _, document_id = head.partition(" ")
        found[document_id] = problems
    return found


@pytest.mark.parametrize("batch", [1000, 2])
def test_verify_names_every_document_that_does_not_fit_with_the_rule_it_breaks(
    backend: Backend, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enhancement, "_SCAN_BATCH", batch)  # 2: many reads, every kind of _id
    planted = plant(backend)
    report = backend.store.verify()
    assert not report.ok
    invalid = _invalid_by_id(report)
    expected = {**planted.bad_prompts, **planted.bad_runs}
    assert set(invalid) == set(expected)
    for document_id, field in expected.items():
        assert invalid[document_id].startswith(field + " "), invalid[document_id]
    assert "4.5" in invalid[planted.rated_by_hand]
    assert backend.store.verify(quick=True).invalid_documents == []


def test_verify_is_ok_again_once_the_documents_are_fixed(backend: Backend) -> None:
    planted = plant(backend)
    raw = backend.raw
    raw["prompts"].update_one({"_id": planted.text_is_a_number}, {"$set": {"prompt_text": "42"}})
    raw["prompts"].update_one(
        {"_id": planted.no_created_at}, {"$set": {"created_at": datetime.now(UTC)}}
    )
    raw["prompts"].delete_one({"prompt_text": "Typed in mongosh"})
    raw["prompts"].update_one({"_id": planted.enhanced_child}, {"$set": {"inputs": {}}})
    raw["runs"].update_one({"_id": planted.rated_by_hand}, {"$set": {"rating": 4}})
    raw["runs"].update_one(
        {"_id": planted.dated_by_hand}, {"$set": {"created_at": datetime.now(UTC)}}
    )
    assert backend.store.verify().invalid_documents == []
    assert backend.store.list_prompts(limit=100).skipped == []


# -- the CLI and the MCP tools -----------------------------------------------------------------


@pytest.fixture
def invoke(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI over the backend's store (sync, or the async twin driven to the sync shape)."""
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setattr(cli_module._Context, "store", lambda self: backend.store)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args), catch_exceptions=False)


def test_the_cli_prints_the_good_rows_and_a_warning_naming_the_bad_ids(
    backend: Backend, invoke: Any
) -> None:
    planted = plant(backend)
    listed = invoke("run", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert {run["id"] for run in json.loads(listed.stdout)} == {
        planted.good_run,
        planted.enhance_run,
    }
    warning = listed.stderr.strip()
    assert warning.startswith("warning: left out 2 stored document(s)")
    assert len(warning.splitlines()) == 1
    for document_id in planted.bad_runs:
        assert document_id in warning
    table = invoke("prompt", "list")
    assert planted.good_prompt in table.stdout
    assert all(document_id in table.stderr for document_id in planted.bad_prompts)


def test_the_cli_refuses_one_bad_document_in_one_line_and_verify_lists_them(
    backend: Backend, invoke: Any
) -> None:
    planted = plant(backend)
    shown = invoke("run", "show", planted.rated_by_hand)
    assert shown.exit_code == 1
    assert "Traceback" not in shown.output and "ValidationError" not in shown.output
    assert planted.rated_by_hand in shown.stderr and "rating" in shown.stderr
    assert "cosmos-mongo verify" in shown.stderr
    checked = invoke("verify")
    assert checked.exit_code == 1
    assert "stored documents fit the data model" in checked.stdout
    assert planted.rated_by_hand in checked.stdout


def test_the_cli_deletes_a_prompt_that_does_not_fit_when_told_yes(
    backend: Backend, invoke: Any
) -> None:
    planted = plant(backend)
    asked = invoke("prompt", "delete", planted.text_is_a_number)
    assert asked.exit_code == 1 and "prompt_text" in asked.stderr
    deleted = invoke("prompt", "delete", planted.text_is_a_number, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert backend.raw["prompts"].find_one({"_id": planted.text_is_a_number}) is None


def test_mcp_tools_name_what_they_left_out_and_what_they_cannot_read(
    async_backend: Backend,
) -> None:
    planted = plant(async_backend)
    store = async_backend.store.async_store

    async def ask() -> dict[str, Any]:
        async with Client(build_server(store=store)) as session:
            return {
                "list_runs": await session.call_tool("list_runs", {"limit": 1}),
                "list_prompts": await session.call_tool("list_prompts", {"limit": 50}),
                "get_run": await session.call_tool("get_run", {"run_id": planted.rated_by_hand}),
                "verify": await session.call_tool("verify_enhancements", {}),
            }

    answers = async_backend.store.runner.run(ask())
    prompts = answers["list_prompts"].structured_content
    assert {each["id"] for each in prompts["skipped"]} == set(planted.bad_prompts)
    assert all(document_id in prompts["note"] for document_id in planted.bad_prompts)
    assert "verify_enhancements" in prompts["note"]
    assert prompts["next_offset"] is None
    # The newest run does not fit: the page holds none, names it, and the next starts after it.
    runs = answers["list_runs"].structured_content
    assert runs["returned"] == 0 and runs["next_offset"] == 1
    assert [each["id"] for each in runs["skipped"]] == [planted.rated_by_hand]
    refused = answers["get_run"]
    assert refused.is_error
    text = refused.content[0].text
    assert planted.rated_by_hand in text and "rating" in text and "verify_enhancements" in text
    assert "try again later" not in text
    invalid = answers["verify"].structured_content["invalid_documents"]
    assert {line.split(":")[0].split(" ")[1] for line in invalid} == {
        *planted.bad_prompts,
        *planted.bad_runs,
    }


def test_iter_documents_reaches_every_kind_of_id_for_export_and_copy(backend: Backend) -> None:
    """A document inserted in mongosh has an ObjectId ``_id``, another a number: ``$gt`` on
    a string id never reaches either, so the walk goes kind by kind."""
    planted = plant(backend)
    backend.raw["prompts"].insert_one({"_id": 12, "prompt_text": "A number as id"})
    stored = {str(document["_id"]) for document in backend.raw["prompts"].find({}, {"_id": 1})}
    for batch_size in (1, 2, 500):
        walked = [
            str(document["_id"])
            for document in collect(
                backend.store, "iter_documents", "prompts", batch_size=batch_size
            )
        ]
        assert sorted(walked) == sorted(stored)  # each once
    assert planted.inserted_by_hand in stored and "12" in stored
