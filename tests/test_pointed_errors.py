"""Errors point at the right thing: the backup's destination, what is wrong with a connection
string, the document whose key is taken, the run and prompt a revert refuses, and a missing
prompt as opposed to one that was never enhanced."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pymongo.errors import DuplicateKeyError

from cosmos_mongo import CosmosStore
from cosmos_mongo.cli import cli
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.errors import (
    ConflictError,
    InvalidInputError,
    PromptNotFoundError,
    StorageError,
)
from cosmos_mongo.ops import InsertOne, translate
from tests.conftest import Backend

# -- backup: the destination is named, not the source ----------------------------------------


def test_a_backup_into_a_missing_directory_names_the_destination(tmp_path: Path) -> None:
    destination = tmp_path / "nope" / "x.sqlite3"
    with open_embedded(tmp_path / "data") as database, pytest.raises(InvalidInputError) as caught:
        database.backup(destination)
    assert caught.value.field == "destination"
    assert str(destination) in str(caught.value) and "does not exist" in str(caught.value)
    assert str(tmp_path / "data") not in str(caught.value)  # the source is fine


def test_the_backup_command_blames_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    result = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path / "data"), "backup", "/proc/nope/x.sqlite3"]
    )
    assert result.exit_code == 1
    assert "destination: /proc/nope/x.sqlite3" in result.output
    assert "embedded database" not in result.output


# -- a connection string the driver refuses: why, without the credentials --------------------


def test_a_malformed_uri_says_what_is_wrong() -> None:
    with pytest.raises(StorageError) as caught:
        CosmosStore.connect("mongodb://[bad")
    message = str(caught.value)
    assert "not valid" in message and "IPv6" in message
    assert not message.endswith("ValueError")


def test_a_malformed_uri_error_never_shows_the_password() -> None:
    with pytest.raises(StorageError) as caught:
        CosmosStore.connect("mongodb://alice:hunter22@db.example:99999/")
    message = str(caught.value)
    assert "Port must be an integer" in message
    assert "hunter22" not in message and "alice" not in message


# -- a duplicate key: the collection and the key, nothing else --------------------------------


def _insert(collection: str, document: dict[str, Any]) -> Generator[Any, Any, Any]:
    return (yield from InsertOne(collection, document))


def test_a_duplicate_key_conflict_names_the_collection_and_the_key(backend: Backend) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    again = dict(backend.raw["prompts"].find_one({"_id": prompt.id}))
    again["prompt_text"] = "private words nobody should see"
    with pytest.raises(ConflictError) as caught:
        backend.store._run(_insert("prompts", again))
    message = str(caught.value)
    assert "in prompts" in message and prompt.id in message
    assert "private words" not in message
    assert caught.value.reason == "duplicate" and caught.value.prompt_id == prompt.id


def test_a_servers_duplicate_key_names_its_key_value_and_the_run() -> None:
    error = DuplicateKeyError(
        "E11000 duplicate key error collection: cosmos.runs index: _id_ dup key: {...}",
        11000,
        {"keyPattern": {"_id": 1}, "keyValue": {"_id": "rs_0123456789abcdef"}},
    )
    step = InsertOne("runs", {"_id": "rs_0123456789abcdef", "secret": "never shown"})
    translated = translate(error, step)
    assert isinstance(translated, ConflictError)
    assert str(translated) == (
        "a document with that key already exists in runs: _id 'rs_0123456789abcdef'"
    )
    assert translated.run_ids == ["rs_0123456789abcdef"] and translated.prompt_id is None


def test_the_embedded_engine_reports_the_taken_key_as_a_server_does(tmp_path: Path) -> None:
    with open_embedded(tmp_path / "data") as database:
        database["runs"].insert_one({"_id": "rs_0123456789abcdef", "v": 1})
        with pytest.raises(DuplicateKeyError) as caught:
            database["runs"].insert_one({"_id": "rs_0123456789abcdef", "v": 2})
    assert caught.value.details == {"keyValue": {"_id": "rs_0123456789abcdef"}}


# -- revert refusals carry their facts --------------------------------------------------------


def test_reverting_a_run_that_is_no_enhancement_names_the_run_and_prompt(
    backend: Backend,
) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    run = backend.store.create_run(prompt.id, {})
    with pytest.raises(ConflictError) as caught:
        backend.store.revert_enhancement(run.id)
    error = caught.value
    assert (error.reason, error.prompt_id, error.run_ids) == (
        "not_enhancement",
        prompt.id,
        [run.id],
    )


def test_reverting_a_create_new_enhancement_names_the_new_prompt(backend: Backend) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    result = backend.store.enhance_prompt(prompt.id)
    with pytest.raises(ConflictError) as caught:
        backend.store.revert_enhancement(result.run_id)
    error = caught.value
    assert (error.reason, error.prompt_id, error.run_ids) == (
        "created_new",
        result.enhanced_prompt_id,
        [result.run_id],
    )


def test_reverting_after_a_later_edit_says_the_text_changed(backend: Backend) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    result = backend.store.enhance_prompt(prompt.id, create_new=False)
    backend.store.update_prompt(prompt.id, prompt_text="Edited by hand afterwards")
    with pytest.raises(ConflictError) as caught:
        backend.store.revert_enhancement(result.run_id)
    error = caught.value
    assert (error.reason, error.prompt_id, error.run_ids) == (
        "text_changed",
        prompt.id,
        [result.run_id],
    )


def test_reverting_a_reverted_run_says_it_is_not_completed(backend: Backend) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    result = backend.store.enhance_prompt(prompt.id, create_new=False)
    backend.store.revert_enhancement(result.run_id)
    with pytest.raises(ConflictError) as caught:
        backend.store.revert_enhancement(result.run_id)
    error = caught.value
    assert (error.reason, error.prompt_id, error.run_ids) == (
        "not_completed",
        prompt.id,
        [result.run_id],
    )


# -- history of a missing prompt; details of a missing and of a never enhanced prompt --------

MISSING = "ps_0123456789abcdef0123456789abcdef"


def test_the_history_of_an_unknown_prompt_is_not_found(backend: Backend) -> None:
    with pytest.raises(PromptNotFoundError):
        backend.store.get_enhancement_history(MISSING)


def test_a_prompt_never_enhanced_has_an_empty_history(backend: Backend) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    assert backend.store.get_enhancement_history(prompt.id) == []


def test_a_deleted_original_keeps_the_history_its_kept_provenance_records(
    backend: Backend,
) -> None:
    prompt = backend.store.create_prompt("A robot arm stacks blocks")
    result = backend.store.enhance_prompt(prompt.id)
    backend.store.delete_prompt(prompt.id)
    assert [run.id for run in backend.store.get_enhancement_history(prompt.id)] == [result.run_id]


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args))

    return run


def test_details_tells_a_missing_prompt_from_one_never_enhanced(invoke: Any) -> None:
    created = invoke("prompt", "create", "A robot arm stacks blocks", "--json")
    prompt_id = json.loads(created.output)["id"]
    never = invoke("details", prompt_id)
    missing = invoke("details", MISSING)
    assert never.exit_code == missing.exit_code == 1
    assert "was never enhanced" in never.output
    assert f"prompt {MISSING!r} not found" in missing.output


def test_history_of_a_missing_prompt_exits_1_saying_so(invoke: Any) -> None:
    result = invoke("history", MISSING)
    assert result.exit_code == 1
    assert f"prompt {MISSING!r} not found" in result.output
