"""`cosmos-mongo copy`: each target option means what it says, whatever COSMOS_MONGO_URI says.

The source is the store the command points at (``--uri``, else ``COSMOS_MONGO_URI``, else the
embedded default); ``--to`` names a server, ``--to-data-dir`` an embedded database, ``--to-db``
the target database (alone: another database where the source is).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pymongo import MongoClient

from cosmos_mongo import CosmosStore
from cosmos_mongo.cli import cli
from cosmos_mongo.config import Settings


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _seed(store: CosmosStore) -> str:
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {"name": "robot"})
    store.enhance_prompt(prompt.id, enhanced_text="A robot arm stacks three red blocks.")
    store.create_run(prompt.id, {"num_steps": 35})
    return prompt.id


def _documents(store: CosmosStore) -> dict[str, list[dict[str, Any]]]:
    return {name: list(store.iter_documents(name)) for name in ("prompts", "runs")}


def _embedded(data_dir: Path, database: str) -> CosmosStore:
    return CosmosStore.connect(settings=Settings(uri=None, data_dir=data_dir, database=database))


@pytest.fixture
def server(mongodb_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """COSMOS_MONGO_URI pointing at a scratch database of the test server, seeded; dropped at
    the end with every other scratch database a test made there. Yields ``(uri, name)``."""
    name = f"cosmos_copy_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("COSMOS_MONGO_URI", mongodb_uri)
    monkeypatch.setenv("COSMOS_MONGO_DATABASE", name)
    monkeypatch.delenv("COSMOS_MONGO_DATA_DIR", raising=False)
    with CosmosStore.connect(mongodb_uri, name) as store:
        _seed(store)
    client: Any = MongoClient(mongodb_uri)
    try:
        yield mongodb_uri, name
    finally:
        for database in client.list_database_names():
            if database.startswith(name):
                client.drop_database(database)
        client.close()


@pytest.mark.realserver
def test_to_data_dir_copies_from_the_server_in_the_env_into_that_directory(
    server: tuple[str, str], tmp_path: Path
) -> None:
    uri, name = server
    copied = _run("copy", "--to-data-dir", str(tmp_path / "local"), "--json")
    assert copied.exit_code == 0, copied.output
    counts = json.loads(copied.stdout)
    assert counts["prompts"]["inserted"] == 2 and counts["runs"]["inserted"] == 2
    assert counts["verify_ok"] is True
    with CosmosStore.connect(uri, name) as source, _embedded(tmp_path / "local", name) as target:
        assert _documents(target) == _documents(source)
        assert len(_documents(source)["prompts"]) == 2  # nothing was copied into the server


@pytest.mark.realserver
def test_to_data_dir_with_to_db_names_the_embedded_database(
    server: tuple[str, str], tmp_path: Path
) -> None:
    uri, name = server
    copied = _run("copy", "--to-data-dir", str(tmp_path / "local"), "--to-db", "archive")
    assert copied.exit_code == 0, copied.output
    assert f"Verification of the embedded database 'archive' in {tmp_path / 'local'}" in (
        copied.stdout
    )
    with CosmosStore.connect(uri, name) as source, _embedded(tmp_path / "local", "archive") as copy:
        assert _documents(copy) == _documents(source)
    with MongoClient(uri) as client:
        assert "archive" not in client.list_database_names()


@pytest.mark.realserver
def test_to_db_alone_copies_into_another_database_of_the_same_server(
    server: tuple[str, str],
) -> None:
    uri, name = server
    copied = _run("copy", "--to-db", f"{name}_second")
    assert copied.exit_code == 0, copied.output
    with (
        CosmosStore.connect(uri, name) as source,
        CosmosStore.connect(uri, f"{name}_second") as second,
    ):
        assert _documents(second) == _documents(source)


@pytest.mark.realserver
def test_a_target_that_is_the_source_or_two_targets_are_usage_errors(
    server: tuple[str, str], tmp_path: Path
) -> None:
    uri, name = server
    itself = _run("copy", "--to", uri)
    assert itself.exit_code == 2 and "the target is the source" in itself.output
    assert _run("copy", "--to-db", name).exit_code == 2
    both = _run("copy", "--to", uri, "--to-data-dir", str(tmp_path / "local"))
    assert both.exit_code == 2 and "give one" in both.output
    assert not (tmp_path / "local").exists()


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The embedded default in ``tmp_path/data``, seeded, with COSMOS_MONGO_URI unset."""
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_DATABASE", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    with _embedded(tmp_path / "data", "cosmos") as store:
        _seed(store)
    return tmp_path / "data"


def test_to_db_alone_copies_into_another_database_of_the_same_directory(embedded: Path) -> None:
    copied = _run("copy", "--to-db", "archive")
    assert copied.exit_code == 0, copied.output
    with _embedded(embedded, "cosmos") as source, _embedded(embedded, "archive") as copy:
        assert _documents(copy) == _documents(source)


def test_the_source_directory_named_another_way_is_still_the_source(
    embedded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(embedded.parent)
    itself = _run("copy", "--to-data-dir", "./data/../data")
    assert itself.exit_code == 2 and "the target is the source" in itself.output
    assert _run("copy", "--to-data-dir", "data", "--to-db", "cosmos").exit_code == 2


def test_to_with_to_data_dir_is_refused_before_anything_is_opened(
    embedded: Path, tmp_path: Path
) -> None:
    refused = _run("copy", "--to", "mongodb://nowhere.invalid", "--to-data-dir", str(tmp_path))
    assert refused.exit_code == 2
    assert "--to URI (a server) and --to-data-dir DIR" in refused.output


def test_a_copy_into_an_empty_store_ends_with_the_quick_checks_and_a_count(
    embedded: Path, tmp_path: Path
) -> None:
    copied = _run("copy", "--to-data-dir", str(tmp_path / "empty"), "--json")
    assert copied.exit_code == 0, copied.output
    answer = json.loads(copied.stdout)
    assert (answer["verify"], answer["verify_ok"], answer["missing"]) == ("quick", True, {})
    told = _run("copy", "--to-data-dir", str(tmp_path / "other"))
    assert "`cosmos-mongo verify` on the target runs the full checks" in told.stdout


def test_a_copy_into_a_store_that_held_documents_runs_the_full_checks_and_fails_on_them(
    embedded: Path, tmp_path: Path
) -> None:
    with _embedded(tmp_path / "held", "cosmos") as target:
        kept = target.create_prompt("A drone flies over farmland", {}, {})
        run = target.create_run(kept.id, {"num_steps": 35})
        # A run whose prompt is gone: what only the full checks find.
        target.db["prompts"].delete_one({"_id": kept.id})
    copied = _run("copy", "--to-data-dir", str(tmp_path / "held"), "--json")
    answer = json.loads(copied.stdout)
    assert copied.exit_code == 1
    assert (answer["verify"], answer["verify_ok"]) == ("full", False)
    with _embedded(tmp_path / "held", "cosmos") as target:
        assert run.id in " ".join(target.verify().orphan_runs)


def test_documents_deleted_from_the_target_during_a_copy_fail_it_by_name(
    embedded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = CosmosStore.put_documents

    def then_deleted(
        store: CosmosStore, collection: Any, documents: list[dict[str, Any]]
    ) -> tuple[int, int, int]:
        counts = written(store, collection, documents)
        if collection == "runs":  # another process deletes one as it lands
            store.db["runs"].delete_one({"_id": documents[0]["_id"]})
        return counts

    monkeypatch.setattr(CosmosStore, "put_documents", then_deleted)
    copied = _run("copy", "--to-data-dir", str(tmp_path / "target"))
    assert copied.exit_code == 1
    assert "runs copied but missing from the target: 1" in copied.stdout
