"""The enhancer backends: the offline template, output cleaning, and the OpenAI-compatible
client against a real HTTP server on loopback (no mock objects)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo.enhancers import (
    INSTRUCTIONS,
    MAX_ENHANCED_WORDS,
    Enhancer,
    OpenAICompatibleEnhancer,
    SuppliedTextEnhancer,
    TemplateEnhancer,
    _ffmpeg,
    clean_enhanced_text,
    first_frame,
)
from cosmos_mongo.errors import EnhancementError, InvalidInputError

PROMPTS = [
    "A robot arm picks up three wooden blocks and stacks them on a workbench",
    "A car drives down a rainy city street at night",
    "Two humanoid robots walk through a warehouse carrying boxes",
    "a drone flies low over farmland at sunset",
    "Waves",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_template_keeps_the_words_and_adds_cosmos_detail(prompt: str) -> None:
    text = TemplateEnhancer().enhance(prompt, {})
    assert text.lower().startswith(prompt.lower())  # the original words, first and whole
    assert "\n" not in text and len(text.split()) <= MAX_ENHANCED_WORDS
    for aspect in ("focus of the shot", "motion", "scene takes place", "camera", "light"):
        assert aspect in text.lower(), aspect
    assert TemplateEnhancer().enhance(prompt, {}) == text  # deterministic
    assert asyncio.run(TemplateEnhancer().aenhance(prompt, {})) == text


def sentences_of(text: str) -> list[str]:
    return [sentence.casefold() for sentence in re.split(r"(?<=[.!?])\s+", text) if sentence]


def doubled_words(text: str) -> list[str]:
    """Runs of one to four words written twice in a row ("the robot the robot")."""
    found = re.finditer(r"\b((?:[a-z']+ ){0,3}[a-z']+) \1\b", text.lower())
    return [match.group(0) for match in found]


@pytest.mark.parametrize("prompt", [*PROMPTS, "Robot", "The robot the robot"])
def test_template_recognises_its_own_expansion_and_never_repeats_a_sentence(prompt: str) -> None:
    enhancer = TemplateEnhancer()
    once = enhancer.enhance(prompt, {})
    twice = enhancer.enhance(once, {})
    assert twice == once  # nothing new to expand: the same text, not the expansion again
    assert enhancer.enhance(twice, {}) == once
    sentences = sentences_of(twice)
    assert len(sentences) == len(set(sentences)) and len(twice.split()) <= 130
    assert doubled_words(twice) == [] or prompt == "The robot the robot"


def test_re_enhancing_an_edited_expansion_keeps_the_edit_and_follows_it() -> None:
    enhancer = TemplateEnhancer()
    once = enhancer.enhance(PROMPTS[0], {})
    edited = once.replace("three wooden blocks", "three red wooden blocks").replace(
        "on a workbench.", "on a workbench at sunset."
    )
    again = enhancer.enhance(edited, {})
    assert again.startswith(
        "A robot arm picks up three red wooden blocks and stacks them on a workbench at sunset. "
        "The robot arm is the clear focus of the shot"
    )
    # The lighting follows the edit; the sentence it replaces is gone, and none repeats.
    assert "Low, warm sunlight" in again and "Soft, natural light" not in again
    assert len(sentences_of(again)) == len(set(sentences_of(again))) == len(sentences_of(once))
    assert doubled_words(again) == []


def test_text_the_old_template_doubled_is_expanded_once() -> None:
    """What earlier versions stored by enhancing their own output twice ("The robot the robot
    is ..." and every sentence again) comes back as one clean expansion."""
    once = TemplateEnhancer().enhance("Robot", {})
    sentences = re.split(r"(?<=[.!?])\s+", once)
    doubled = " ".join(
        [
            *sentences,
            "The robot the robot is the clear focus of the shot, shown in sharp, realistic detail.",
            sentences[2],
            "The scene takes place in a work area with a flat table surface and tools within "
            "reach, which stays consistent from the first frame to the last.",
            *sentences[4:],
        ]
    )
    assert TemplateEnhancer().enhance(doubled, {}) == once
    assert doubled_words(once) == []


def test_template_adds_no_aspect_the_users_sentences_already_give() -> None:
    text = TemplateEnhancer().enhance(
        "A forklift lifts a pallet in a warehouse. The camera orbits it slowly under moonlight.",
        {},
    )
    assert text.count("camera") == 1 and "moonlight" in text
    assert "Soft, natural light" not in text and "large warehouse" in text
    edited_setting = (
        "A cat naps on a sofa. The scene takes place in a sunny attic, which stays consistent "
        "from the first frame to the last."
    )
    assert TemplateEnhancer().enhance(edited_setting, {}).count("The scene takes place") == 1


def test_template_reads_setting_lighting_and_camera_from_the_prompt() -> None:
    night = TemplateEnhancer().enhance(PROMPTS[1], {})
    assert "city street" in night and "night" in night and "rain" in night.lower()
    assert "tracks smoothly alongside the vehicle" in night
    robots = TemplateEnhancer().enhance(PROMPTS[2], {})
    assert "The humanoid robots are the clear focus" in robots and "warehouse" in robots


def test_every_backend_satisfies_the_protocol() -> None:
    for enhancer in (
        TemplateEnhancer(),
        SuppliedTextEnhancer("text"),
        OpenAICompatibleEnhancer("http://127.0.0.1:1/v1", "m"),
    ):
        assert isinstance(enhancer, Enhancer)
    assert TemplateEnhancer().model == "template-v1"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Caption: A cat sits on a mat.", "A cat sits on a mat."),
        ("**Enhanced prompt:** A cat\n\nsits.", "A cat sits."),
        ('Here is the enhanced prompt: "A cat sits."', "A cat sits."),
        ("# Upsampled caption\n- A cat sits.", "A cat sits."),
        ("```\nPrompt: A cat sits.\n```", "A cat sits."),
        ("A cat sits: calmly.", "A cat sits: calmly."),  # a colon inside the text stays
        ("“A cat sits.”", "A cat sits."),
    ],
)
def test_cleaning_strips_labels_markdown_and_quotes(raw: str, clean: str) -> None:
    assert clean_enhanced_text(raw) == clean


def test_instructions_follow_cosmos_guidance() -> None:
    for rule in (
        "Keep its meaning",
        "camera",
        "motion",
        f"at most {MAX_ENHANCED_WORDS} words",
        "one",
        "never repeat a sentence",
    ):
        assert rule in INSTRUCTIONS


# -- a real chat-completions server on 127.0.0.1 ----------------------------------------------


class ChatServer:
    """Answers POST /v1/chat/completions from a script of (status, body) replies."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, reply = server.replies.pop(0) if server.replies else (200, "ok")
                if reply == "hang":
                    server.release.wait(30)
                    status, reply = 200, "late"
                payload = (
                    reply
                    if isinstance(reply, bytes)
                    else json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                        if status == 200 and isinstance(reply, str)
                        else reply
                    ).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()


def client(chat: ChatServer, **options: Any) -> OpenAICompatibleEnhancer:
    return OpenAICompatibleEnhancer(
        chat.url, "llama-3.1-8b", api_key="sk-secret-123", retry_backoff=0, **options
    )


def test_chat_completion_request_and_cleaned_answer(chat: ChatServer) -> None:
    chat.replies = [(200, "**Enhanced prompt:** A robot arm slowly stacks three blocks.")]
    text = client(chat).enhance("A robot arm stacks blocks", {"video": "nope.mp4"})
    assert text == "A robot arm slowly stacks three blocks."
    (request,) = chat.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-secret-123"
    body = request["body"]
    assert body["model"] == "llama-3.1-8b" and body["max_tokens"] == 400
    assert body["messages"][0] == {"role": "system", "content": INSTRUCTIONS}
    assert body["messages"][1] == {"role": "user", "content": "A robot arm stacks blocks"}


def test_async_client_works_the_same(chat: ChatServer) -> None:
    chat.replies = [(503, {"error": "warming up"}), (200, "Async answer.")]
    assert asyncio.run(client(chat).aenhance("prompt", {})) == "Async answer."
    assert len(chat.requests) == 2


def test_busy_and_failing_servers_are_retried(chat: ChatServer, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="cosmos_mongo")
    chat.replies = [
        (429, {"error": "slow down"}),
        (502, b"bad gateway"),
        (200, "Third time lucky."),
    ]
    assert client(chat, max_retries=2).enhance("prompt", {}) == "Third time lucky."
    assert len(chat.requests) == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [m.split(": ", 1)[1] for m in retries] == [
        "HTTP 429; retry 1 of 2",
        "HTTP 502; retry 2 of 2",
    ]


def test_retries_run_out_with_a_clear_error(chat: ChatServer) -> None:
    chat.replies = [(503, {"error": "down"})] * 3
    with pytest.raises(EnhancementError, match="HTTP 503"):
        client(chat, max_retries=1).enhance("prompt", {})
    assert len(chat.requests) == 2


def test_a_client_error_is_not_retried_and_the_key_is_never_shown(chat: ChatServer) -> None:
    chat.replies = [(401, {"error": "invalid key"})]
    enhancer = client(chat)
    with pytest.raises(EnhancementError, match="HTTP 401") as caught:
        enhancer.enhance("prompt", {})
    assert len(chat.requests) == 1
    assert "sk-secret-123" not in str(caught.value) and "sk-secret-123" not in repr(enhancer)


@pytest.mark.parametrize("reply", [{"choices": []}, {"unexpected": True}, b"not json", ""])
def test_unusable_answers_are_errors(chat: ChatServer, reply: Any) -> None:
    chat.replies = [(200, reply)]
    with pytest.raises(EnhancementError):
        client(chat).enhance("prompt", {})


def test_a_hanging_server_times_out(chat: ChatServer) -> None:
    chat.replies = [(200, "hang")]
    with pytest.raises(EnhancementError, match="Timeout"):
        client(chat, timeout=0.3, max_retries=0).enhance("prompt", {})


def test_an_unreachable_server_is_an_error(chat: ChatServer) -> None:
    port_closed = OpenAICompatibleEnhancer(
        "http://127.0.0.1:9/v1", "m", retry_backoff=0, max_retries=1
    )
    with pytest.raises(EnhancementError, match="ConnectError"):
        port_closed.enhance("prompt", {})


def test_base_url_must_be_http() -> None:
    with pytest.raises(InvalidInputError, match="base_url"):
        OpenAICompatibleEnhancer("file:///etc/passwd", "m")


def test_the_store_records_the_server_model_end_to_end(
    chat: ChatServer, mock_store: CosmosStore
) -> None:
    chat.replies = [(200, "Caption: A robot arm stacks three blocks in soft light.")]
    store = CosmosStore(mock_store.db, enhancer=client(chat))
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    result = store.enhance_prompt(prompt.id, enhancement_model="pixtral-12b")
    assert result.enhancement_model == "pixtral-12b"
    assert result.enhanced_text == "A robot arm stacks three blocks in soft light."
    assert chat.requests[0]["body"]["model"] == "pixtral-12b"
    assert store.get_run(result.run_id).execution_config["model"] == "pixtral-12b"


# -- vision: the first frame of inputs.video ----------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ffmpeg = _ffmpeg()
    assert ffmpeg, "the test extra installs imageio-ffmpeg"
    path = tmp_path_factory.mktemp("video") / "red.mp4"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=1600x900:d=1",
            "-frames:v",
            "5",
            "-c:v",
            "mpeg4",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def test_first_frame_is_a_jpeg_no_larger_than_1024(video: Path) -> None:
    frame = first_frame(str(video))
    assert frame is not None
    data, mime = frame
    assert mime == "image/jpeg" and data[:2] == b"\xff\xd8"
    # The JPEG SOF0 marker carries the size: 1600x900 scaled down to fit 1024.
    start = data.index(b"\xff\xc0")
    height, width = (
        int.from_bytes(data[start + 5 : start + 7], "big"),
        int.from_bytes(data[start + 7 : start + 9], "big"),
    )
    assert (width, height) == (1024, 576)


def test_unreadable_inputs_give_no_frame(tmp_path: Path) -> None:
    assert first_frame(str(tmp_path / "missing.mp4")) is None
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert first_frame(str(broken)) is None


def test_a_vision_model_gets_the_first_frame(chat: ChatServer, video: Path) -> None:
    chat.replies = [(200, "A red scene in bright light.")]
    OpenAICompatibleEnhancer(chat.url, "pixtral-12b", retry_backoff=0).enhance(
        "A red scene", {"video": str(video)}
    )
    content = chat.requests[0]["body"]["messages"][1]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:2] == b"\xff\xd8"
    assert content[1] == {"type": "text", "text": "A red scene"}


def test_a_text_model_gets_no_image(chat: ChatServer, video: Path) -> None:
    chat.replies = [(200, "Text only.")]
    client(chat).enhance("A red scene", {"video": str(video)})
    assert chat.requests[0]["body"]["messages"][1]["content"] == "A red scene"
