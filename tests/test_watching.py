"""Watching prompts and runs: a look reports what changed since the previous one, whoever
wrote it, and on the embedded default a look after no commit reads no document."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient, monitoring

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.watching import ChangeWatch


def test_a_look_reports_each_watched_document_that_another_writer_changed(store: Any) -> None:
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    run = store.create_run(prompt.id, {})
    other = store.create_prompt("A drone over a field", {}, {})
    watch = ChangeWatch()
    watch.add("prompt", prompt.id)
    watch.add("run", run.id)
    assert store.poll_changes(watch) == []  # the first look only records
    store.update_run_status(run.id, "completed")
    store.update_prompt(other.id, prompt_text="A drone over a wheat field")
    assert store.poll_changes(watch) == [("run", run.id)]
    assert store.poll_changes(watch) == []
    store.delete_prompt(prompt.id, force=True)
    assert sorted(store.poll_changes(watch)) == [("prompt", prompt.id), ("run", run.id)]
    watch.discard("run", run.id)
    assert watch.watched == frozenset({("prompt", prompt.id)})
    store.stop_watching(watch)  # closes a server's change stream; a no-op elsewhere


def test_on_the_embedded_default_another_connections_commit_is_seen_and_no_commit_reads_nothing(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as mine, open_embedded(tmp_path) as theirs:
        watcher, writer = CosmosStore(mine), CosmosStore(theirs)
        prompt = writer.create_prompt("A robot arm stacks blocks", {}, {})
        run = writer.create_run(prompt.id, {})
        watch = ChangeWatch()
        watch.add("run", run.id)
        assert watcher.poll_changes(watch) == []
        reads = mine.engine.stats.documents_decoded
        assert watcher.poll_changes(watch) == []
        assert mine.engine.stats.documents_decoded == reads  # the stamp alone answered
        writer.update_run_status(run.id, "completed")
        assert watcher.poll_changes(watch) == [("run", run.id)]


class FindCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.finds += event.command_name == "find"

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.realserver
def test_on_a_server_with_change_streams_a_look_after_no_change_reads_no_document(
    mongodb_uri: str,
) -> None:
    counter = FindCounter()
    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    mine: MongoClient[dict[str, Any]] = MongoClient(
        mongodb_uri, tz_aware=True, event_listeners=[counter]
    )
    theirs: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True)
    with mine, theirs:
        try:
            watcher, writer = CosmosStore(mine[name]), CosmosStore(theirs[name])
            prompt = writer.create_prompt("A robot arm stacks blocks", {}, {})
            watch = ChangeWatch()
            watch.add("prompt", prompt.id)
            assert watcher.poll_changes(watch) == []
            finds = counter.finds
            assert watcher.poll_changes(watch) == []
            assert counter.finds == finds  # the stream reported nothing: nothing was read
            writer.update_prompt(prompt.id, prompt_text="A robot arm stacks cubes")
            with_change = []
            for _ in range(200):  # the stream reports within its await time; bounded
                if with_change := watcher.poll_changes(watch):
                    break
            assert with_change == [("prompt", prompt.id)]
            watcher.stop_watching(watch)
        finally:
            mine.drop_database(name)
