"""Input checks: unit cases plus hypothesis over the whole store."""

from __future__ import annotations

from typing import Any

import mongomock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosmos_mongo import CosmosStore, InvalidInputError, NotFoundError
from cosmos_mongo import validation as v


@pytest.mark.parametrize(
    "value",
    [
        None,
        1,
        {"$ne": None},
        ["ps_" + "0" * 32],
        "ps_" + "0" * 7,
        "ps_" + "0" * 65,
        "ps_" + "G" * 32,
        "rs_" + "0" * 32,
        "ps_" + "0" * 32 + "\n",
        " ps_" + "0" * 32,
    ],
)
def test_prompt_ids_must_be_well_formed_strings(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="prompt_id"):
        v.check_prompt_id(value)


def test_a_well_formed_id_passes_unchanged() -> None:
    assert v.check_prompt_id("ps_" + "ab" * 16) == "ps_" + "ab" * 16


def test_nested_mappings_are_checked_at_every_depth() -> None:
    with pytest.raises(InvalidInputError, match=r"parameters\.a\.b"):
        v.check_document_fields({"a": {"b": {"$gt": 1}}}, "parameters")
    with pytest.raises(InvalidInputError, match="finite"):
        v.check_document_fields({"x": float("nan")}, "inputs")
    with pytest.raises(InvalidInputError, match="nest"):
        deep: dict[str, Any] = {}
        cursor = deep
        for _ in range(10):
            cursor["k"] = {}
            cursor = cursor["k"]
        v.check_document_fields(deep, "inputs")


def test_error_message_names_field_and_rule() -> None:
    with pytest.raises(InvalidInputError) as caught:
        v.check_rating(9)
    assert caught.value.field == "rating"
    assert "1 to 5" in caught.value.rule and str(caught.value).startswith("rating:")


# -- hypothesis: random arguments either succeed or raise InvalidInputError, and a failure
# -- leaves the database exactly as it was. A well-formed id of no document may also raise
# -- NotFoundError: the one other clear answer, with the same guarantee.

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_like = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
anything = st.one_of(
    json_like,
    st.binary(max_size=10),
    st.just({"$ne": None}),
    st.just({"$gt": ""}),
    st.sampled_from(["ps_$where", "ps_" + "0" * 32, "", " ", "\x00", "x" * 10_001]),
)


def snapshot(database: Any) -> dict[str, list[Any]]:
    return {name: list(database[name].find({})) for name in ("prompts", "runs")}


def _fresh() -> tuple[Any, CosmosStore, str, str]:
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    store = CosmosStore(database)
    prompt = store.create_prompt("seed prompt", {}, {})
    run = store.create_run(prompt.id, {})
    return database, store, prompt.id, run.id


CALLS = {
    "create_prompt": lambda s, a, b, c: s.create_prompt(a, b, c),
    "get_prompt": lambda s, a, b, c: s.get_prompt(a),
    "list_prompts": lambda s, a, b, c: s.list_prompts(a, b),
    "search_prompts": lambda s, a, b, c: s.search_prompts(a, b),
    "update_prompt": lambda s, a, b, c: s.update_prompt(a, prompt_text=b, parameters=c),
    "create_run": lambda s, a, b, c: s.create_run(a, b, model_type=c),
    "create_run_status": lambda s, a, b, c: s.create_run(a, b, initial_status=c),
    "list_runs": lambda s, a, b, c: s.list_runs(a, b, c),
    "update_run_status": lambda s, a, b, c: s.update_run_status(a, b),
    "update_run": lambda s, a, b, c: s.update_run(a, outputs=b, metadata=c),
    "set_run_rating": lambda s, a, b, c: s.set_run_rating(a, b),
    "delete_run": lambda s, a, b, c: s.delete_run(a),
    "delete_prompt": lambda s, a, b, c: s.delete_prompt(a),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_arguments_succeed_or_raise_invalid_input_and_fail_cleanly(
    call: str, data: Any
) -> None:
    database, store, prompt_id, run_id = _fresh()
    first = data.draw(st.one_of(anything, st.sampled_from([prompt_id, run_id])), label="first")
    second = data.draw(
        st.one_of(anything, st.sampled_from([1, 3, "running", "enhance"])), label="second"
    )
    third = data.draw(st.one_of(anything, st.sampled_from(["completed", "upscale"])), label="third")
    before = snapshot(database)
    try:
        CALLS[call](store, first, second, third)
    except InvalidInputError as exc:
        assert exc.field and exc.rule
        assert snapshot(database) == before
    except NotFoundError:
        assert snapshot(database) == before
