"""Enhancers: what rewrites a short prompt into a detailed Cosmos prompt.

An enhancer is any object with a ``model`` attribute (the name recorded on the enhance run), a
sync ``enhance(prompt_text, inputs)`` and an async ``aenhance(prompt_text, inputs)``, each
returning the rewritten text. Three backends ship here:

* :class:`OpenAICompatibleEnhancer`: chat completions over HTTP (vLLM, NVIDIA NIM, Ollama,
  OpenAI), with timeout, retries and an optional first video frame for vision models;
* :class:`SuppliedTextEnhancer`: text a caller (an agent) already wrote;
* :class:`TemplateEnhancer`: a deterministic offline expansion that needs no model, labelled
  ``template-v1``. It is the default only when nothing else is configured.

The store cleans every result with :func:`clean_enhanced_text` before storing it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from cosmos_mongo.config import Settings
from cosmos_mongo.errors import EnhancementError, InvalidInputError
from cosmos_mongo.redaction import (
    known_secrets,
    redact_http_logs,
    redact_text,
    redact_url,
    scrub,
    url_secrets,
)

log = logging.getLogger(__name__)

MAX_ENHANCED_WORDS: Final = 250
MAX_TOKENS: Final = 400  # room for 250 words
TEMPERATURE: Final = 0.2  # faithful rewrites, little invention

# Written for this project from Cosmos' published guidance on prompt upsampling.
INSTRUCTIONS: Final = (
    "You rewrite short prompts for NVIDIA Cosmos, a model that generates videos of the physical "
    "world. Expand the user's prompt into one detailed paragraph that a video model can follow. "
    "Keep its meaning and every concrete detail it gives, and keep any quoted text exactly. "
    "Describe the main subject and its appearance, what it does with clear, simple verbs of "
    "motion, the setting and the objects around it, the lighting and weather, and how the "
    "camera frames and moves. Make the motion physically plausible. Do not invent a story, "
    "dialogue, on-screen text or people and objects the prompt does not suggest. Write plain "
    f"English prose: no lists, headings or markdown, at most {MAX_ENHANCED_WORDS} words. If the "
    "prompt is already detailed (perhaps enhanced before), refine it instead of adding to it, "
    "and never repeat a sentence. Reply with the rewritten prompt only."
)


@runtime_checkable
class Enhancer(Protocol):
    """Rewrites a prompt. ``model`` names what wrote the text; it is stored on the run."""

    model: str

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str: ...

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str: ...


_LABEL = (
    r"(?:(?:here(?:'s| is)\s+(?:the|your|an?)\s+)?(?:enhanced|upsampled|rewritten|improved|"
    r"detailed|expanded|long|refined)?\s*(?:video\s+)?(?:prompt|caption|description|version)"
    r"|caption|prompt)"
)
_PREFIX = re.compile(rf"^\s*{_LABEL}\s*[:\-\u2013]\s*", re.IGNORECASE)
# A line holding only a label, as a heading or in bold: "# Upsampled caption", "**Prompt:**".
_LABEL_LINE = re.compile(rf"^\s*#*\s*(?:\*\*)?\s*{_LABEL}\s*:?\s*(?:\*\*)?\s*:?\s*$", re.I | re.M)
_MARKDOWN = re.compile(r"(```[a-z]*|\*\*|__|`|^#{1,6}\s+|^\s*(?:[-*+]|\d+[.)])\s+)", re.MULTILINE)


# A fenced block: its fence, its info string's first word (the language), its body.
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<language>[^\s`]*)[^\n]*\n"
    r"(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
# Fenced text that is still prose (a model quoting its answer); any other language is code.
_PROSE_LANGUAGES: Final = frozenset({"", "text", "txt", "plain", "plaintext", "markdown", "md"})
# A markdown heading line (ATX: "# Title"): a title, never part of the prompt.
_HEADING_LINE = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t][^\n]*)?$", re.MULTILINE)
# A chatty first line that only announces the answer: "Sure! Here's an enhanced version:".
_ANNOUNCEMENT = re.compile(
    r"\A\s*(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[^\n]{0,20}?)?"
    r"(?:here(?:'s|\s+is)|below\s+is|this\s+is|the\s+following\s+is)\b[^\n]{0,80}?"
    r"\b(?:prompt|caption|description|version|rewrite)\b[^\n]{0,40}:[ \t]*\n(?=\s*\S)",
    re.IGNORECASE,
)


def fenced_code_language(text: str) -> str | None:
    """The language of the code an answer holds instead of prose (``python`` for an answer
    whose fenced blocks are all code), or None when it holds prose."""
    blocks = list(_FENCE.finditer(text))
    languages = [block["language"].lower() for block in blocks]
    if blocks and not any(language in _PROSE_LANGUAGES for language in languages):
        return languages[0]
    return None


def _unwrapped(text: str) -> str:
    """The prompt inside a model's packaging: the longest prose block when the answer is
    fenced (what surrounds it is commentary), without heading lines and an announcing first
    line. Text that is only a heading keeps its words."""
    prose = [
        block["body"]
        for block in _FENCE.finditer(text)
        if block["language"].lower() in _PROSE_LANGUAGES and block["body"].strip()
    ]
    if prose:
        text = max(prose, key=len)
    for pattern in (_ANNOUNCEMENT, _HEADING_LINE):
        stripped = pattern.sub("", text)
        if stripped.strip():
            text = stripped
    return text


def clean_enhanced_text(text: str) -> str:
    """One plain paragraph: no ``Caption:``-style prefix, no markdown heading, fence or
    announcing first line, no surrounding quotes."""
    cleaned = _LABEL_LINE.sub("", _unwrapped(text))
    previous = None
    while previous != cleaned:
        previous = cleaned
        cleaned = " ".join(_MARKDOWN.sub("", cleaned).split())
        cleaned = _PREFIX.sub("", cleaned, count=1).strip()
        cleaned = re.sub(r"^[-*+]\s+", "", cleaned)
        for opening, closing in (('"', '"'), ("'", "'"), ("“", "”")):
            if len(cleaned) >= 2 and cleaned.startswith(opening) and cleaned.endswith(closing):
                cleaned = cleaned[1:-1].strip()
    return cleaned


def tidy_model_text(text: str) -> str:
    """A model's answer as stored: cleaned, then cut to the word limit at a sentence end."""
    return limit_words(clean_enhanced_text(text.replace("\x00", "")))


def word_count(text: str) -> int:
    return len(text.split())


def limit_words(text: str, limit: int = MAX_ENHANCED_WORDS) -> str:
    """Cut a model's over-long answer at the last sentence end within ``limit`` words."""
    words = text.split()
    if len(words) <= limit:
        return text
    kept = " ".join(words[:limit])
    end = max(kept.rfind(". "), kept.rfind("! "), kept.rfind("? "))
    if kept.endswith((".", "!", "?")):
        return kept
    return kept[: end + 1] if end > len(kept) // 2 else kept + "."


class SuppliedTextEnhancer:
    """Returns text the caller already wrote; ``model`` names who wrote it (default ``agent``)."""

    def __init__(self, text: str, model: str = "agent") -> None:
        self.text = text
        self.model = model

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        return self.text

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        return self.text


# -- the offline template -------------------------------------------------------------------

_SETTINGS: Final = (
    (("kitchen", "counter", "stove"), "a tidy kitchen with counters, utensils and appliances"),
    (
        ("warehouse", "forklift", "pallet", "shelf", "shelves"),
        "a large warehouse with tall shelving and a polished concrete floor",
    ),
    (("factory", "assembly", "conveyor"), "a factory floor with machinery and a conveyor line"),
    (
        ("workbench", "table", "desk", "lab"),
        "a work area with a flat table surface and tools within reach",
    ),
    (
        ("street", "city", "intersection", "traffic", "sidewalk"),
        "a city street with buildings, parked cars and road markings",
    ),
    (
        ("highway", "road", "car", "truck", "drive", "driving"),
        "an open road with lane markings and roadside scenery",
    ),
    (
        ("forest", "woods", "trees"),
        "a forest with tall trees, undergrowth and a soft ground of leaves",
    ),
    (("beach", "ocean", "sea", "waves", "shore"), "a shoreline with rolling waves and wet sand"),
    (
        ("field", "farm", "farmland", "crop"),
        "open farmland with rows of crops reaching the horizon",
    ),
    (("mountain", "snow", "glacier"), "a mountain landscape with rocky slopes and patches of snow"),
    (
        ("room", "office", "house", "home", "living"),
        "an interior room with furniture and everyday objects",
    ),
)
_LIGHTING: Final = (
    (
        ("night", "dark", "neon", "streetlight"),
        "It is night: pools of artificial light and reflections contrast with deep shadows",
    ),
    (
        ("rain", "rainy", "wet", "storm"),
        "Overcast skies and falling rain leave surfaces wet and reflective",
    ),
    (("sunset", "dusk", "golden"), "Low, warm sunlight casts long shadows and a golden tint"),
    (
        ("dawn", "sunrise", "morning"),
        "Soft early-morning light gives gentle shadows and cool tones",
    ),
    (("fog", "foggy", "mist"), "Fog softens the distance and diffuses the light"),
    (("snow", "snowy", "winter"), "Bright, diffuse winter light reflects off the snow"),
)
_CAMERAS: Final = (
    (
        ("drive", "driving", "car", "truck", "road", "highway"),
        "The camera tracks smoothly alongside the vehicle at a steady distance",
    ),
    (
        ("drone", "aerial", "fly", "flying", "above"),
        "An aerial camera glides slowly forward, looking down on the scene",
    ),
    (
        ("arm", "robot", "gripper", "hand", "hands", "pick", "picks", "grasp", "grasps"),
        "A steady medium shot from a fixed camera at table height keeps the manipulation in frame",
    ),
    (
        ("walk", "walks", "walking", "run", "runs", "running"),
        "A handheld-smooth camera follows the movement at eye level",
    ),
)
_ANY_SETTING: Final = "a realistic setting consistent with the action"
_STEADY_CAMERA: Final = "The camera holds a steady, eye-level view with a slow push-in"
_ARTICLES: Final = {"a", "an", "the", "two", "three", "several", "some"}


_VERBS: Final = frozenset(
    [
        "is",
        "are",
        "moves",
        "move",
        "walks",
        "walk",
        "runs",
        "run",
        "drives",
        "drive",
        "flies",
        "fly",
        "stacks",
        "stack",
        "picks",
        "pick",
        "places",
        "place",
        "pours",
        "pour",
        "rolls",
        "roll",
        "slides",
        "slide",
        "lifts",
        "lift",
        "carries",
        "carry",
        "pushes",
        "push",
        "pulls",
        "pull",
        "falls",
        "fall",
        "rises",
        "rise",
        "turns",
        "turn",
        "opens",
        "open",
        "closes",
        "close",
        "sits",
        "sit",
        "stands",
        "stand",
        "crosses",
        "cross",
        "follows",
        "follow",
        "navigates",
        "navigate",
        "sorts",
        "sort",
        "grabs",
        "grab",
        "drops",
        "drop",
        "swims",
        "swim",
    ]
)
_PREPOSITIONS: Final = frozenset(
    [
        "on",
        "in",
        "at",
        "through",
        "across",
        "over",
        "with",
        "down",
        "into",
        "from",
        "along",
        "under",
        "near",
        "by",
        "around",
        "toward",
        "towards",
        "of",
        "while",
        "and",
    ]
)


def _matches(words: set[str], table: tuple[tuple[tuple[str, ...], str], ...]) -> list[str]:
    return [phrase for keys, phrase in table if words.intersection(keys)]


def _subject(sentence: str) -> str:
    """The noun phrase before the first verb or preposition, e.g. 'robot arm', 'humanoid robots'.

    Read from one sentence only, and ended by an article, so it never runs on into the next
    noun phrase ('robot. The robot' is not a subject)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", sentence)
    if words and words[0].lower() in _ARTICLES:
        words = words[1:]
    subject: list[str] = []
    for word in words[:5]:
        lower = word.lower()
        if subject and (lower in _VERBS or lower in _PREPOSITIONS or lower in _ARTICLES):
            break
        subject.append(lower)
    return " ".join(subject[:4]) or "main subject"


# The template's sentences, written once so that it can also recognise them.
_FOCUS_TAIL: Final = "the clear focus of the shot, shown in sharp, realistic detail."
_SETTING_FRAME: Final = (
    "The scene takes place in {}, which stays consistent from the first frame to the last."
)
_DEFAULT_LIGHT: Final = "Soft, natural light shows the scene clearly with believable shadows"
_FOOTAGE: Final = (
    "The footage looks like real video: stable exposure, natural colors and no text or graphics "
    "on screen."
)


def _focus_sentence(subject: str, plural: bool) -> str:
    return f"The {subject} {'are' if plural else 'is'} {_FOCUS_TAIL}"


def _motion_sentence(plural: bool) -> str:
    return (
        f"{'Their' if plural else 'Its'} motion is continuous and physically plausible, at a "
        "natural pace, with objects responding with believable weight, contact and momentum."
    )


# Every sentence but the subject's that the template can write: text it expanded before is
# recognised by these (and by _OWN_FOCUS), and only the sentences around them are the user's.
_OWN_SENTENCES: Final = frozenset(
    [
        _motion_sentence(True),
        _motion_sentence(False),
        *(_SETTING_FRAME.format(phrase) for _, phrase in _SETTINGS),
        _SETTING_FRAME.format(_ANY_SETTING),
        *(f"{phrase}." for _, phrase in _LIGHTING),
        f"{_DEFAULT_LIGHT}.",
        *(f"{phrase}." for _, phrase in _CAMERAS),
        f"{_STEADY_CAMERA}.",
        _FOOTAGE,
    ]
)
# Any subject of up to eight words: also the doubled ones older versions wrote.
_OWN_FOCUS: Final = re.compile(
    rf"The (?:[A-Za-z][A-Za-z'-]* ){{1,8}}(?:is|are) {re.escape(_FOCUS_TAIL)}"
)
# A sentence of the user's that already gives one of the aspects the template would add.
_ASPECTS: Final = {
    "focus": re.compile(r"\bthe clear focus of the shot\b", re.IGNORECASE),
    "motion": re.compile(r"^(?:its|their) motion\b", re.IGNORECASE),
    "setting": re.compile(r"^the scene takes place\b", re.IGNORECASE),
    "lighting": re.compile(
        r"\b(?:lighting|lit|sunlight|sunlit|moonlight|moonlit|daylight)\b", re.IGNORECASE
    ),
    "camera": re.compile(r"\bcamera\b", re.IGNORECASE),
    "footage": re.compile(r"^the footage\b", re.IGNORECASE),
}
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str) -> list[str]:
    return [sentence for sentence in _SENTENCE_END.split(" ".join(text.split())) if sentence]


def _is_own(sentence: str) -> bool:
    return sentence in _OWN_SENTENCES or _OWN_FOCUS.fullmatch(sentence) is not None


def _users_sentences(text: str) -> list[str]:
    """The user's sentences of ``text``: those the template did not write, each once."""
    seen: set[str] = set()
    kept = []
    for sentence in _sentences(text):
        key = sentence.casefold().rstrip(".!? ")
        if not _is_own(sentence) and key not in seen:
            seen.add(key)
            kept.append(sentence)
    return kept


class TemplateEnhancer:
    """A deterministic, offline Cosmos-style expansion. Honest label: ``template-v1``.

    It keeps the original text verbatim as the first sentences and adds the subject, its
    motion, the setting, the lighting and the camera, chosen from the prompt's own words. No
    model is involved, so it cannot add knowledge; it makes a short prompt complete and
    consistent. It recognises its own sentences: enhancing its output again rewrites them from
    the user's sentences (so an edit shows through) and never repeats one, and it adds no
    aspect the user's sentences already give.
    """

    model = "template-v1"

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        users = _users_sentences(prompt_text)
        if not users:
            # Nothing but the template's own sentences: there is nothing new to expand.
            return limit_words(" ".join(dict.fromkeys(_sentences(prompt_text))))
        original = " ".join(users)
        if original[-1:] not in ".!?":
            original += "."
        original = original[:1].upper() + original[1:]
        given = {
            aspect
            for aspect, pattern in _ASPECTS.items()
            if any(pattern.search(sentence) for sentence in users)
        }
        words = {word.lower() for word in re.findall(r"[A-Za-z]+", original)}
        subject = _subject(users[0])
        plural = subject.endswith("s") and not subject.endswith("ss")
        settings = _matches(words, _SETTINGS)
        lights = _matches(words, _LIGHTING)[:2] or [_DEFAULT_LIGHT]
        cameras = _matches(words, _CAMERAS)
        added = {
            "focus": [_focus_sentence(subject, plural)],
            "motion": [_motion_sentence(plural)],
            "setting": [_SETTING_FRAME.format(settings[0] if settings else _ANY_SETTING)],
            "lighting": [f"{light}." for light in lights],
            "camera": [f"{cameras[0] if cameras else _STEADY_CAMERA}."],
            "footage": [_FOOTAGE],
        }
        sentences = [original]
        for aspect, wanted in added.items():
            if aspect not in given:
                sentences.extend(wanted)
        return limit_words(" ".join(sentences))

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        return self.enhance(prompt_text, inputs)


# -- OpenAI-compatible chat completions -------------------------------------------------------

_VISION_HINTS: Final = (
    "pixtral",
    "llava",
    "-vl",
    "vl-",
    "vision",
    "cosmos-reason",
    "gemma-3",
    "qwen2.5-vl",
)
_RETRY_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504})
_IMAGE_SUFFIXES: Final = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def _is_vision_model(model: str) -> bool:
    return any(hint in model.lower() for hint in _VISION_HINTS)


def _ffmpeg() -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def first_frame(path: str, max_side: int = 1024) -> tuple[bytes, str] | None:
    """The first frame of a video (or an image file as is), at most ``max_side`` pixels.

    Returns ``(bytes, mime type)``, or None when the file is unreadable or no ffmpeg is
    available (install ``cosmos-mongo[vision]`` for a bundled one).
    """
    source = Path(path)
    if not source.is_file():
        return None
    mime = _IMAGE_SUFFIXES.get(source.suffix.lower())
    if mime is not None:
        return source.read_bytes(), mime
    ffmpeg = _ffmpeg()
    if ffmpeg is None:
        log.info("no ffmpeg available; enhancing %s without its first frame", source.name)
        return None
    scale = f"scale='min({max_side},iw)':'min({max_side},ih)':force_original_aspect_ratio=decrease"
    try:
        result = subprocess.run(
            [
                ffmpeg,
                "-v",
                "error",
                "-i",
                str(source),
                "-frames:v",
                "1",
                "-vf",
                scale,
                "-f",
                "image2pipe",
                "-vcodec",
                "mjpeg",
                "-",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout, "image/jpeg") if result.returncode == 0 and result.stdout else None


def retry_after_seconds(response: httpx.Response) -> float | None:
    """How long a ``Retry-After`` header asks to wait (seconds, or an HTTP date measured from
    the answer's ``Date``, else from now); None without a readable one."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            sent = response.headers.get("Date")
            now = parsedate_to_datetime(sent) if sent else datetime.now(UTC)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None or now.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _same_words(answer: str, prompt_text: str) -> bool:
    """Whether an answer only repeats the prompt (case, spacing, quotes, end mark aside)."""

    def words(text: str) -> str:
        return " ".join(clean_enhanced_text(text).casefold().split()).rstrip(" .!?")

    return words(answer) == words(prompt_text)


def without_credentials(text: str) -> str:
    """Any ``scheme://user:password@`` in ``text`` with the credentials replaced by ``***``,
    and the values of secret-looking query parameters (``?key=``, ``&token=``...) too."""
    return redact_text(text)


class OpenAICompatibleEnhancer:
    """Chat completions at ``{base_url}/chat/completions``: vLLM, NVIDIA NIM, Ollama, OpenAI.

    ``api_key`` is sent as a bearer token and never logged or shown in ``repr``; a
    ``user:password@`` in ``base_url`` is sent as a Basic ``Authorization`` header, never in
    the request URL, and query parameters (``?key=...``) go on every request. Neither these
    credentials nor their echo (base64 of ``user:password``, the key) appear in an error's
    text, a log line (httpx's included) or ``repr``. Connection
    errors, timeouts and 408/409/429/5xx answers are retried ``max_retries`` times with
    exponential back-off, or after the wait a ``Retry-After`` header asks for (an answer asking
    for longer than ``timeout`` fails at once). ``sleep`` and ``async_sleep`` do the waiting
    (tests pass recorders). An answer that only repeats the prompt, or that is code instead of
    prose, is refused. With ``vision`` (default: guessed from the model name) and a readable
    ``inputs["video"]``, the first frame goes along as an image.

    Raises :class:`~cosmos_mongo.errors.EnhancementError` when no usable answer arrives.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: SecretStr | str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
        vision: bool | None = None,
        max_tokens: int = MAX_TOKENS,
        temperature: float = TEMPERATURE,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInputError("base_url", "must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # for messages, logs and repr
        self.model = model
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        parts = urlsplit(self.base_url)
        host = parts.netloc.rpartition("@")[2]
        endpoint = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        query = f"?{parts.query}" if parts.query else ""
        self._endpoint = f"{endpoint}/chat/completions{query}"  # no userinfo in it
        self._auth: httpx.BasicAuth | None = None
        if parts.username is not None or parts.password is not None:
            self._auth = httpx.BasicAuth(
                unquote(parts.username or ""), unquote(parts.password or "")
            )
        key = [] if self._api_key is None else [self._api_key.get_secret_value()]
        self._secrets = known_secrets([*url_secrets(self.base_url), *key])
        redact_http_logs(self._secrets)
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._vision_choice = vision
        self.vision = _is_vision_model(model) if vision is None else vision
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._transport = transport
        self._async_transport = async_transport
        self._sleep = sleep
        self._async_sleep = async_sleep

    def __repr__(self) -> str:
        return f"OpenAICompatibleEnhancer(base_url={self.shown_url!r}, model={self.model!r})"

    def _redacted(self, text: str) -> str:
        """``text`` without the URL's credentials, its secret query values or any echo of
        them or of the API key (base64 of ``user:password`` included)."""
        return scrub(text.replace(self.base_url, self.shown_url), self._secrets)

    def with_model(self, model: str) -> OpenAICompatibleEnhancer:
        """The same endpoint and settings, asking for another model."""
        twin = OpenAICompatibleEnhancer.__new__(OpenAICompatibleEnhancer)
        twin.__dict__.update(self.__dict__)
        twin.model = model
        twin.vision = (
            _is_vision_model(model) if self._vision_choice is None else self._vision_choice
        )
        return twin

    def request_body(self, prompt_text: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        video = inputs.get("video")
        if self.vision and isinstance(video, str):
            frame = first_frame(video)
            if frame is not None:
                data = base64.b64encode(frame[0]).decode("ascii")
                content.append(
                    {"type": "image_url", "image_url": {"url": f"data:{frame[1]};base64,{data}"}}
                )
        content.append({"type": "text", "text": prompt_text})
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": content if len(content) > 1 else prompt_text},
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    def _answer(self, response: httpx.Response, prompt_text: str) -> str:
        if response.status_code != 200:
            # Scrubbed before it is cut, so no part of an echoed secret is left at the cut.
            body = self._redacted(response.text)[:200]
            raise EnhancementError(
                self._redacted(
                    f"{self.model} at {self.base_url} answered HTTP {response.status_code}: {body}"
                )
            )
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError) as exc:
            raise EnhancementError(f"{self.model} returned an unreadable answer") from exc
        if not isinstance(text, str) or not text.strip():
            raise EnhancementError(f"{self.model} returned an empty answer")
        if (language := fenced_code_language(text)) is not None:
            raise EnhancementError(
                f"{self.model} answered with a {language or 'code'} code block instead of a "
                "prompt in prose"
            )
        tidied = tidy_model_text(text)
        if _same_words(tidied, prompt_text):
            raise EnhancementError(
                f"{self.model} returned the prompt unchanged instead of an enhanced prompt"
            )
        return tidied

    def _settle(
        self, attempt: int, outcome: httpx.Response | httpx.HTTPError, prompt_text: str
    ) -> str | float:
        """The answer, or how many seconds to wait before trying again; raises once retries
        are spent or pointless."""
        retry = attempt < self.max_retries
        if isinstance(outcome, httpx.HTTPError):
            if retry:
                self._log_retry(attempt, type(outcome).__name__)
                return float(self.retry_backoff * 2**attempt)
            detail = f"{type(outcome).__name__}: {outcome}"
            raise EnhancementError(
                self._redacted(f"{self.model} at {self.base_url}: {detail}")
            ) from outcome
        if retry and outcome.status_code in _RETRY_STATUSES:
            asked = retry_after_seconds(outcome)
            if asked is not None and asked > self.timeout:
                raise EnhancementError(
                    self._redacted(
                        f"{self.model} at {self.base_url} answered HTTP {outcome.status_code} "
                        f"and asks to wait {asked:g} s (Retry-After) before trying again, longer "
                        f"than the enhancer timeout ({self.timeout:g} s); try again later"
                    )
                )
            wait = float(self.retry_backoff * 2**attempt) if asked is None else asked
            asking = "" if asked is None else f", Retry-After {asked:g} s"
            self._log_retry(attempt, f"HTTP {outcome.status_code}{asking}")
            return wait
        return self._answer(outcome, prompt_text)

    def _log_retry(self, attempt: int, why: str) -> None:
        log.info(
            "enhancer %s at %s: %s; retry %d of %d",
            self.model,
            self.shown_url,
            why,
            attempt + 1,
            self.max_retries,
        )

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        body = self.request_body(prompt_text, inputs)
        url = self._endpoint
        with httpx.Client(
            timeout=self.timeout, transport=self._transport, auth=self._auth
        ) as client:
            for attempt in range(self.max_retries + 1):
                outcome: httpx.Response | httpx.HTTPError
                try:
                    outcome = client.post(url, json=body, headers=self._headers())
                except httpx.HTTPError as exc:
                    outcome = exc
                settled = self._settle(attempt, outcome, prompt_text)
                if isinstance(settled, str):
                    return settled
                self._sleep(settled)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        body = await asyncio.to_thread(self.request_body, prompt_text, inputs)
        url = self._endpoint
        transport = self._async_transport
        async with httpx.AsyncClient(
            timeout=self.timeout, transport=transport, auth=self._auth
        ) as client:
            for attempt in range(self.max_retries + 1):
                outcome: httpx.Response | httpx.HTTPError
                try:
                    outcome = await client.post(url, json=body, headers=self._headers())
                except httpx.HTTPError as exc:
                    outcome = exc
                settled = self._settle(attempt, outcome, prompt_text)
                if isinstance(settled, str):
                    return settled
                await self._async_sleep(settled)
        raise AssertionError("unreachable")  # pragma: no cover


def resolve_enhancer(
    configured: Enhancer, enhancement_model: str | None, enhanced_text: str | None
) -> Enhancer:
    """The enhancer one call uses: caller text, the configured one, or it asked for another model.

    Raises:
        InvalidInputError: ``enhancement_model`` names a model the configured enhancer cannot run.
    """
    if enhanced_text is not None:
        return SuppliedTextEnhancer(enhanced_text, enhancement_model or "agent")
    if enhancement_model is None or enhancement_model == configured.model:
        return configured
    with_model = getattr(configured, "with_model", None)
    if with_model is None:
        raise InvalidInputError(
            "enhancement_model",
            f"the configured enhancer only runs {configured.model!r}; leave enhancement_model "
            "unset, or pass enhanced_text to record text written elsewhere",
        )
    return with_model(enhancement_model)  # type: ignore[no-any-return]


def enhancer_from_settings(settings: Settings) -> Enhancer:
    """The configured enhancer: OpenAI-compatible when a base URL is set, else the template.

    Raises:
        InvalidInputError: the OpenAI-compatible enhancer is chosen without a model name.
    """
    kind = settings.enhancer
    if kind == "auto":
        kind = "openai" if settings.enhancer_base_url else "template"
    if kind == "template":
        return TemplateEnhancer()
    if not settings.enhancer_base_url or not settings.enhancer_model:
        raise InvalidInputError(
            "COSMOS_MONGO_ENHANCER_MODEL",
            "set COSMOS_MONGO_ENHANCER_BASE_URL and COSMOS_MONGO_ENHANCER_MODEL for the "
            "openai enhancer",
        )
    return OpenAICompatibleEnhancer(
        settings.enhancer_base_url,
        settings.enhancer_model,
        api_key=settings.enhancer_api_key,
        timeout=settings.enhancer_timeout,
        max_retries=settings.enhancer_max_retries,
        vision=settings.enhancer_vision,
    )
