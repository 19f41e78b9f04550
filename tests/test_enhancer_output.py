"""A model's answer is checked, not trusted: an echo of the prompt or code fails the run, a
heading, an announcement or a fence around the text is taken off, and a 429's Retry-After is
honoured within the enhancer's timeout. The server is an httpx.MockTransport; waits are
recorded, never slept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cosmos_mongo.enhancers import (
    OpenAICompatibleEnhancer,
    clean_enhanced_text,
    fenced_code_language,
)
from cosmos_mongo.errors import EnhancementError
from tests.conftest import Backend

PROMPT = "A robot arm stacks three blocks"


def answering(*replies: tuple[int, Any, dict[str, str]]) -> Callable[[httpx.Request], Any]:
    """A chat server answering with ``(status, content or JSON body, headers)`` in turn."""
    queue = list(replies)

    def handle(request: httpx.Request) -> httpx.Response:
        status, reply, headers = queue.pop(0)
        body = (
            {"choices": [{"message": {"role": "assistant", "content": reply}}]}
            if status == 200
            else reply
        )
        return httpx.Response(status, json=body, headers=headers)

    return handle


class Waits:
    """Records the waits an enhancer asks for, sync and async."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)


def enhancer(
    handle: Callable[[httpx.Request], Any], waits: Waits | None = None, **options: Any
) -> OpenAICompatibleEnhancer:
    transport = httpx.MockTransport(handle)
    waits = waits or Waits()
    return OpenAICompatibleEnhancer(
        "http://chat.test/v1",
        "llama-3.1-8b",
        transport=transport,
        async_transport=transport,
        sleep=waits.sleep,
        async_sleep=waits.async_sleep,
        **options,
    )


# -- an echo or code is refused; the run is marked failed -------------------------------------


@pytest.mark.parametrize("echo", [PROMPT, f"  {PROMPT.lower()}.  ", f'"{PROMPT}."'])
def test_an_answer_that_only_repeats_the_prompt_is_refused(echo: str) -> None:
    with pytest.raises(EnhancementError, match="returned the prompt unchanged"):
        enhancer(answering((200, echo, {}))).enhance(PROMPT, {})


def test_an_echoing_model_fails_the_run_and_leaves_the_prompt_as_it_was(
    backend: Backend,
) -> None:
    prompt = backend.store.create_prompt(PROMPT)
    store = backend.over(enhancer=enhancer(answering((200, PROMPT + ".", {}))))
    with pytest.raises(EnhancementError, match="returned the prompt unchanged") as caught:
        store.enhance_prompt(prompt.id, create_new=False)
    run = backend.store.get_run(caught.value.run_id)
    assert run.status == "failed" and "unchanged" in run.error_message
    assert backend.store.get_prompt(prompt.id).prompt_text == PROMPT
    assert backend.store.get_enhancement_details(prompt.id) is None


def test_an_answer_in_code_fails_the_run(backend: Backend) -> None:
    prompt = backend.store.create_prompt(PROMPT)
    code = "```python\nstack(blocks=3)\n```"
    store = backend.over(enhancer=enhancer(answering((200, code, {}))))
    with pytest.raises(EnhancementError, match="python code block") as caught:
        store.enhance_prompt(prompt.id)
    assert backend.store.get_run(caught.value.run_id).status == "failed"
    assert backend.store.list_enhanced_prompts() == []


# -- packaging is taken off; legitimate text is left alone ------------------------------------

STORED = "A robot arm slowly stacks three wooden blocks on a workbench in soft light."


@pytest.mark.parametrize(
    "answer",
    [
        f"# Robot Workshop\n\n{STORED}",
        f"## Enhanced Prompt\n{STORED}",
        f"**Enhanced prompt:** {STORED}",
        f"Sure! Here's an enhanced version of your prompt:\n\n{STORED}",
        f"```\n{STORED}\n```",
        f"Here is the rewrite:\n```text\n{STORED}\n```\nI added lighting and pace.",
        f"# Robot Workshop\n~~~markdown\n{STORED}\n~~~",
    ],
)
def test_a_heading_announcement_or_fence_never_reaches_the_prompt(
    answer: str, mock_store: Any
) -> None:
    store = type(mock_store)(mock_store.db, enhancer=enhancer(answering((200, answer, {}))))
    prompt = store.create_prompt(PROMPT)
    result = store.enhance_prompt(prompt.id)
    assert result.enhanced_text == STORED
    assert store.get_prompt(result.enhanced_prompt_id).prompt_text == STORED


@pytest.mark.parametrize(
    "text",
    [
        "A robot arm picks up a C# manual and a 2 * 3 crate.",
        "A robot arm writes its first prompt:\nhello world on a whiteboard.",
        "A sign reads: here is the new version: open daily.",
        "# A robot arm stacks three blocks",  # only a heading: its words are the text
    ],
)
def test_legitimate_text_keeps_its_words(text: str) -> None:
    cleaned = clean_enhanced_text(text)
    assert cleaned.replace("# ", "").split() == text.replace("# ", "").split()
    assert fenced_code_language(text) is None


# -- Retry-After --------------------------------------------------------------------------------


def test_a_429_waits_as_long_as_its_retry_after_asks() -> None:
    waits = Waits()
    handle = answering((429, {"error": "slow down"}, {"Retry-After": "7"}), (200, STORED, {}))
    assert enhancer(handle, waits, retry_backoff=0.5).enhance(PROMPT, {}) == STORED
    assert waits.seconds == [7.0]


def test_a_retry_after_date_counts_from_the_answers_date() -> None:
    waits = Waits()
    headers = {
        "Date": "Mon, 07 Dec 2026 00:00:00 GMT",
        "Retry-After": "Mon, 07 Dec 2026 00:00:12 GMT",
    }
    handle = answering((503, {"error": "busy"}, headers), (200, STORED, {}))
    assert enhancer(handle, waits).enhance(PROMPT, {}) == STORED
    assert waits.seconds == [12.0]


def test_without_retry_after_the_backoff_doubles() -> None:
    waits = Waits()
    handle = answering((429, {}, {}), (502, {}, {}), (200, STORED, {}))
    assert enhancer(handle, waits, retry_backoff=0.5).enhance(PROMPT, {}) == STORED
    assert waits.seconds == [0.5, 1.0]


def test_a_retry_after_longer_than_the_timeout_fails_at_once() -> None:
    waits = Waits()
    handle = answering((429, {"error": "quota"}, {"Retry-After": "3600"}), (200, STORED, {}))
    with pytest.raises(EnhancementError, match=r"asks to wait 3600 s .* timeout \(60 s\)"):
        enhancer(handle, waits, timeout=60.0).enhance(PROMPT, {})
    assert waits.seconds == []


def test_the_async_client_honours_retry_after_too() -> None:
    waits = Waits()
    handle = answering((429, {}, {"Retry-After": "2.5"}), (200, STORED, {}))
    assert asyncio.run(enhancer(handle, waits).aenhance(PROMPT, {})) == STORED
    assert waits.seconds == [2.5]
