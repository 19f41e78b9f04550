"""``put_documents`` (what ``copy`` writes with) checks every document against the contract
before it writes any, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cosmos_mongo import InvalidInputError
from cosmos_mongo import queries as q
from tests.conftest import Backend

START = datetime(2026, 1, 1, tzinfo=UTC)


def _prompt(n: int) -> dict[str, Any]:
    return q.prompt_document(f"ps_{n:032x}", f"A robot arm stacks {n} blocks", {}, {}, START)


def _stored(backend: Backend) -> int:
    return int(backend.raw["prompts"].count_documents({}))


def test_a_document_breaking_the_model_refuses_the_batch_naming_its_id_and_rule(
    backend: Backend,
) -> None:
    bad = {**_prompt(2), "created_at": "yesterday"}
    with pytest.raises(InvalidInputError) as caught:
        backend.store.put_documents("prompts", [_prompt(1), bad, _prompt(3)])
    message = str(caught.value)
    assert caught.value.field == "documents"
    assert repr(bad["_id"]) in message and "created_at" in message
    assert "none of the 3 documents" in message
    assert _stored(backend) == 0
    assert backend.store.list_prompts() == []  # listing still works for everyone


def test_a_run_missing_a_required_field_is_refused(backend: Backend) -> None:
    run = {"_id": "rs_" + "1" * 32, "prompt_id": "ps_" + "1" * 32, "created_at": START}
    with pytest.raises(InvalidInputError, match="model_type is required but missing"):
        backend.store.put_documents("runs", [run])
    assert backend.raw["runs"].count_documents({}) == 0


@pytest.mark.parametrize(
    ("document", "rule"),
    [
        ({"prompt_text": "p", "created_at": START}, "has no '_id'"),
        ("not a document", "must be a document"),
        (None, "must be a document"),
        ({"_id": 7, "prompt_text": "p", "created_at": START}, "_id must be a valid string"),
        # The model reads "id" too; the stored _id is what must fit.
        ({"_id": 7, "id": "ps_1", "prompt_text": "p", "created_at": START}, "_id must be"),
    ],
)
def test_a_document_without_a_usable_id_is_a_clear_error_and_writes_nothing(
    backend: Backend, document: Any, rule: str
) -> None:
    with pytest.raises(InvalidInputError, match=rule):
        backend.store.put_documents("prompts", [_prompt(1), document])
    assert _stored(backend) == 0


def test_a_doubled_new_id_in_one_batch_is_refused_before_anything_is_written(
    backend: Backend,
) -> None:
    with pytest.raises(InvalidInputError, match="appears twice"):
        backend.store.put_documents("prompts", [_prompt(1), _prompt(2), _prompt(1)])
    assert _stored(backend) == 0


def test_documents_that_are_not_a_list_are_refused(backend: Backend) -> None:
    with pytest.raises(InvalidInputError, match="must be a list"):
        backend.store.put_documents("prompts", _prompt(1))


def test_a_valid_batch_is_written_and_a_second_put_inserts_nothing(backend: Backend) -> None:
    batch = [_prompt(n) for n in range(3)]
    assert backend.store.put_documents("prompts", batch) == (3, 0, 0)
    assert backend.store.put_documents("prompts", batch) == (0, 3, 0)
    assert len(backend.store.list_prompts()) == 3
