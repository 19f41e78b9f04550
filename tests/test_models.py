"""Every datetime a model holds is in UTC: naive ones are read as UTC (pymongo's default),
aware ones in another zone are converted, and what a ``tz_aware`` client decodes is kept as
it is, the same object. A read by id's model reader is ``model_of`` for its model."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import bson
import pytest
from bson.tz_util import utc as BSON_UTC
from pydantic import ValidationError

from cosmos_mongo.errors import InvalidDocumentError
from cosmos_mongo.models import EnhancementDetails, Prompt, Run, model_of, model_reader

NAIVE = datetime(2026, 1, 1, 12, 0)
ELSEWHERE = datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
DECODED: datetime = bson.decode(bson.encode({"at": NAIVE}), bson.CodecOptions(tz_aware=True))["at"]


def _prompt(**times: object) -> Prompt:
    return Prompt.from_document({"_id": "ps_" + "a" * 32, "prompt_text": "x", **times})


def test_a_naive_or_other_zone_datetime_is_read_as_the_same_instant_in_utc() -> None:
    for given in (NAIVE, ELSEWHERE, NAIVE.replace(tzinfo=UTC)):
        prompt = _prompt(created_at=given, updated_at=given)
        for value in (prompt.created_at, prompt.updated_at):
            assert value == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
            assert value is not None and value.utcoffset() == timedelta(0)
            assert value.tzinfo in (UTC, BSON_UTC)


def test_a_datetime_as_a_tz_aware_client_decodes_it_is_kept_as_it_is() -> None:
    assert DECODED.tzinfo is BSON_UTC
    prompt = _prompt(created_at=DECODED, updated_at=DECODED)
    assert prompt.created_at is DECODED and prompt.updated_at is DECODED


def test_every_datetime_field_of_a_run_and_of_enhancement_details_is_in_utc() -> None:
    run = Run.from_document(
        {
            "_id": "rs_" + "a" * 32,
            "prompt_id": "ps_" + "a" * 32,
            "model_type": "transfer",
            "status": "completed",
            "created_at": NAIVE,
            "updated_at": ELSEWHERE,
            "started_at": NAIVE,
            "completed_at": ELSEWHERE,
        }
    )
    for value in (run.created_at, run.updated_at, run.started_at, run.completed_at):
        assert value == NAIVE.replace(tzinfo=UTC) and value is not None
        assert value.utcoffset() == timedelta(0)
    details = EnhancementDetails(
        run_id=None,
        enhanced_text="y",
        enhancement_model=None,
        enhanced_at=ELSEWHERE,
        original_prompt_id="ps_" + "a" * 32,
        enhanced_prompt_id="ps_" + "b" * 32,
        duration_seconds=None,
    )
    assert details.enhanced_at == NAIVE.replace(tzinfo=UTC)
    assert details.enhanced_at is not None and details.enhanced_at.utcoffset() == timedelta(0)


def test_absent_optional_datetimes_stay_none_and_a_missing_created_at_is_refused() -> None:
    prompt = _prompt(created_at=NAIVE)
    assert prompt.updated_at is None
    assert _prompt(created_at=NAIVE, updated_at=None).updated_at is None
    with pytest.raises(ValidationError, match="created_at"):
        _prompt()


def test_a_model_reader_answers_and_refuses_exactly_as_model_of() -> None:
    read = model_reader(Prompt)
    document = {"_id": "ps_" + "a" * 32, "prompt_text": "x", "created_at": DECODED}
    assert read(document) == model_of(Prompt, document)
    assert read(MappingProxyType(document)) == model_of(Prompt, document)  # any Mapping
    broken = {**document, "prompt_text": 5}
    refusals = []
    for way in (read, functools.partial(model_of, Prompt)):
        with pytest.raises(InvalidDocumentError) as raised:
            way(broken)
        refusals.append((str(raised.value), type(raised.value.__cause__)))
    assert refusals[0] == refusals[1] and refusals[0][1] is ValidationError
    assert "prompt_text" in refusals[0][0]
